"""musicnn's input, inside the graph: waveform -> ``log10(1 + 10000 · mel)``, time-major.

musicnn (Pons & Serra, 2019) computes its input with librosa (``musicnn/extractor.py``):
``librosa.feature.melspectrogram(y, sr=16000, n_fft=512, hop_length=256, n_mels=96)`` (periodic
Hann window, power 2, Slaney mel scale with Slaney area normalisation, 0 to 8 kHz, centred
frames), transposed to (time, mel), cast to float16, then ``log10(10000 · x + 1)`` (its "logC").

Two deviations of the original that this layer does not copy, and one it does:

- the original multiplies the float16 mel by 10,000 *in float16*, where anything above 6.55
  overflows to inf: on the loud test clip (clipped full-scale noise) a quarter of its inputs are
  inf and its tags land up to 0.46 (musicnn) and 0.92 (VGG) away from those of the float32 product.
  Here the product and the log are float32 (the parity reference, ``tests/musicnn_reference.py``,
  does the same);
- the original's log is computed in float16 as well (steps of up to 0.002); here in float32;
- the float16 rounding of the mel itself is kept (``float16_mel=True``, the default): the models
  were trained on spectrograms stored in float16 (``MTT_musicnn``'s ``config.json`` names its
  features ``mtt_float16``), as the extractor rounds them. It matters below the parity tolerance, not above it: against the original,
  the largest error is 4e-6 on the taggram and 5e-5 on ``penultimate`` with the rounding, 6e-5
  and 5e-4 without it (``tests/test_musicnn.py``, five clips, both MTT models). The rounding is
  a cast to float16 and back, the mel first clipped to float16's largest value (65,504: a mel
  that large needs a full-scale input far beyond [-1, 1]), so it never makes an infinity.
"""

import keras
import numpy as np
from keras import ops

from keras_music_ssl.frontend import DFT_MODES, dft_kernel, mel_filterbank, num_stft_frames, periodic_hann

FLOAT16_MAX = 65504.0


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class MusicnnLogMel(keras.layers.Layer):
    """Raw mono waveform (batch, samples) -> (batch, frames, n_mels) ``log10(1 + scale · mel)``.

    ``center=False`` (the default) frames the input as it is: ``1 + (samples - n_fft) // hop``
    frames, so 48,128 samples give one 187-frame patch. The musicnn models take such patches,
    cut from a track that was padded once at both ends (``track.py``), which is how librosa
    centres the frames of a whole track; ``center=True`` pads each input by ``n_fft // 2`` with
    ``pad_mode`` instead (``1 + samples // hop`` frames, librosa's own call on that input).

    ``dft``: ``"fft"`` (``keras.ops.stft``) or ``"matmul"`` (a strided convolution with a fixed
    windowed DFT basis, for converters without RFFT): see ``keras_music_ssl.frontend``.
    """

    def __init__(self, sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, scale=10000.0,
                 float16_mel=True, center=False, pad_mode="reflect", dft="fft", **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
        if dft not in DFT_MODES:
            raise ValueError(f"dft must be one of {DFT_MODES}, got {dft!r}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.scale = float(scale)
        self.float16_mel = bool(float16_mel)
        self.center = bool(center)
        self.pad_mode = pad_mode
        self.dft = dft
        self.window = periodic_hann(self.n_fft)  # scipy's get_window("hann", n, fftbins=True), librosa's
        self._dft_kernel = dft_kernel(self.window) if dft == "matmul" else None
        # librosa.filters.mel's defaults: Slaney scale and area normalisation, 0 Hz to Nyquist.
        self.mel_filterbank = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, 0.0,
                                             self.sample_rate / 2, "slaney", "slaney")

    def num_frames(self, num_samples):
        return num_stft_frames(num_samples, self.n_fft, self.hop_length, self.center)

    def call(self, waveform):
        x = ops.cast(waveform, "float32")
        if self.center:
            pad = self.n_fft // 2
            x = ops.pad(x, [[0, 0], [pad, pad]], mode=self.pad_mode)
        if self.dft == "fft":
            real, imag = ops.stft(x, sequence_length=self.n_fft, sequence_stride=self.hop_length,
                                  fft_length=self.n_fft, window=ops.convert_to_tensor(self.window), center=False)
            power = real * real + imag * imag  # (batch, frames, n_fft // 2 + 1)
        else:
            kernel = ops.convert_to_tensor(self._dft_kernel.astype("float32"))
            bins = ops.conv(ops.expand_dims(x, -1), kernel, strides=self.hop_length, padding="valid")
            power = ops.square(bins[..., :self.n_fft // 2 + 1]) + ops.square(bins[..., self.n_fft // 2 + 1:])
        mel = ops.matmul(power, ops.convert_to_tensor(self.mel_filterbank))  # (batch, frames, mels)
        if self.float16_mel:
            mel = ops.cast(ops.cast(ops.minimum(mel, FLOAT16_MAX), "float16"), "float32")
        logmel = ops.log(1.0 + self.scale * mel) * float(1.0 / np.log(10.0))
        return ops.cast(logmel, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_frames(input_shape[1]), self.n_mels)

    def get_config(self):
        return {**super().get_config(), "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "n_mels": self.n_mels, "scale": self.scale,
                "float16_mel": self.float16_mel, "center": self.center, "pad_mode": self.pad_mode,
                "dft": self.dft}
