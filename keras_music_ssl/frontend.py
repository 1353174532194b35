"""Waveform -> log-mel spectrogram, inside the graph.

The defaults reproduce the paper's torchaudio frontend exactly (docs/paper.md#frontend):
``MelSpectrogram(sample_rate=16000, n_fft=1024, f_max=11025, n_mels=128,
normalized=True, mel_scale="slaney")`` followed by ``AmplitudeToDB(top_db=100)``.
"""

import warnings

import keras
import numpy as np
from keras import ops


def mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale="slaney", norm=None):
    """Mel filterbank of shape (n_fft // 2 + 1, n_mels), float32, built with librosa.

    torchaudio's ``melscale_fbanks`` and librosa's ``filters.mel`` share the triangular
    formula; ``norm=None`` is torchaudio's default (no Slaney area normalisation).
    """
    import librosa  # only needed at construction time

    with warnings.catch_warnings():
        # f_max > sample_rate / 2 leaves empty top filters; the paper's model has 11 of them.
        warnings.filterwarnings("ignore", message="Empty filters detected")
        fb = librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
            htk=mel_scale == "htk", norm=norm, dtype=np.float64,
        )
    return fb.T.astype(np.float32)


def periodic_hann(n):
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def dft_kernel(window):
    """(n_fft, 1, 2 * (n_fft // 2 + 1)) float64: the windowed real DFT as a 1-D convolution kernel.

    Output channel ``k`` is ``sum_n w[n] x[n] cos(2 pi k n / N)`` (the real part of bin k) and
    channel ``n_fft // 2 + 1 + k`` its imaginary part, ``-sum_n w[n] x[n] sin(2 pi k n / N)``;
    a stride of ``hop_length`` makes the framing part of the same product.
    """
    n_fft = len(window)
    n = np.arange(n_fft)[:, None]
    k = np.arange(n_fft // 2 + 1)[None, :]
    angle = 2.0 * np.pi * ((n * k) % n_fft) / n_fft  # reduced mod N: exact angles for large n*k
    window = np.asarray(window, np.float64)[:, None]
    basis = np.concatenate([window * np.cos(angle), -window * np.sin(angle)], axis=1)
    return basis[:, None, :]


DFT_MODES = ("fft", "matmul")


def num_stft_frames(num_samples, n_fft, hop_length, center):
    """STFT frames of ``num_samples`` samples (None stays None): centred frames pad ``n_fft // 2``
    on both sides."""
    if num_samples is None:
        return None
    if center:
        return 1 + num_samples // hop_length
    return 1 + (num_samples - n_fft) // hop_length


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class LogMelSpectrogram(keras.layers.Layer):
    """Raw mono waveform (batch, samples) -> log-mel (batch, n_mels, frames, 1), channels-last.

    Steps: reflect padding by ``n_fft // 2`` (``center``), STFT with a periodic Hann window,
    optionally divided by the window's L2 norm (``normalized``, torchaudio's
    ``normalized=True``), ``|X| ** power``, a mel filterbank, then decibels:
    ``10 * log10(max(S, amin))`` floored per example at ``max - top_db``.

    The dB floor is applied in the log domain: ``log10`` of an exact zero goes through a
    ``where`` instead of ``max(S, amin)``, so nothing depends on ``amin`` being
    representable. This keeps float16 exports (where 1e-10 rounds to 0) free of -inf/NaN,
    and gives the same numbers as the linear-domain clamp.

    Frames: ``1 + samples // hop_length`` when centred (126 for 4 s at 16 kHz).

    Precision: the waveform is never autocast, and the STFT runs in float32 under any
    dtype policy (float64 if the layer's dtype is float64); only the output is cast to the
    compute dtype, so mixed precision does not quantise the audio before the FFT.

    ``dft``: ``"fft"`` (default, ``keras.ops.stft``) or ``"matmul"``, the same transform as a
    strided 1-D convolution with a fixed windowed cos/sin basis (:func:`dft_kernel`): framing
    and DFT in one matrix product, which every converter and runtime supports (tf2onnx
    cannot convert the RFFT of an STFT). It costs 0.26 GFLOP per 4 s clip, as much as the
    paper's ResNet (the FFT: about 3 MFLOP), so it is meant for exports. Equal to the FFT path
    within float32 rounding (1e-4 dB within 40 dB of the peak; its round-off grows faster
    below); it holds no weights, so the two are interchangeable on the same model.

    The defaults are the paper's (docs/paper.md#frontend).

    Args:
        sample_rate: sample rate of the input, Hz (16000).
        n_fft: FFT size and window length (1024).
        hop_length: samples between frames (512).
        n_mels: mel bands (128).
        f_min: lowest mel frequency, Hz (0).
        f_max: highest mel frequency, Hz (11025, above 16 kHz's Nyquist as in the paper;
            None: the Nyquist frequency).
        mel_scale: "slaney" (default) or "htk".
        mel_norm: filter normalisation: None (default, none) or "slaney" (area).
        power: exponent of the magnitude (2: power spectrogram).
        normalized: divide the STFT by the window's L2 norm (torchaudio's ``normalized=True``).
        center: pad ``n_fft // 2`` samples on both sides so that frames are centred.
        pad_mode: "reflect" (default) or "constant" (zeros) for the centring.
        amin: the smallest power before the log (1e-10).
        top_db: floor, in dB below each example's maximum (100; None: no floor).
        dft: "fft" (default) or "matmul" (for exports, see above).
        **kwargs: Keras ``Layer`` arguments (``name``, ``dtype``, ...).

    Returns:
        Called on a waveform ``(batch, samples)``, the log-mel in dB
        ``(batch, n_mels, frames, 1)``.

    Examples:
        >>> import numpy as np
        >>> from keras_music_ssl import LogMelSpectrogram
        >>> logmel = LogMelSpectrogram()  # the paper's settings
        >>> waveform = np.random.uniform(-1, 1, (2, 64000)).astype("float32")  # two 4 s clips
        >>> tuple(logmel(waveform).shape)
        (2, 128, 126, 1)
    """

    def __init__(
        self,
        sample_rate=16000,
        n_fft=1024,
        hop_length=512,
        n_mels=128,
        f_min=0.0,
        f_max=11025.0,
        mel_scale="slaney",
        mel_norm=None,
        power=2.0,
        normalized=True,
        center=True,
        pad_mode="reflect",
        amin=1e-10,
        top_db=100.0,
        dft="fft",
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
        if dft not in DFT_MODES:
            raise ValueError(f"dft must be one of {DFT_MODES}, got {dft!r}")
        if not amin > 0:
            raise ValueError(f"amin must be > 0, got {amin}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = float(f_max) if f_max is not None else self.sample_rate / 2
        self.mel_scale = mel_scale
        self.mel_norm = mel_norm
        self.power = float(power)
        self.normalized = bool(normalized)
        self.center = bool(center)
        self.pad_mode = pad_mode
        self.amin = float(amin)
        self.top_db = None if top_db is None else float(top_db)
        self.dft = dft

        window = periodic_hann(self.n_fft)
        self.window = window
        # torchaudio's normalized=True divides the complex STFT by sqrt(sum(w^2)); folding
        # that into the window costs nothing at run time.
        self._stft_window = window / np.sqrt(np.sum(window.astype(np.float64) ** 2)).astype(
            np.float32) if self.normalized else window
        self._dft_kernel = dft_kernel(self._stft_window) if dft == "matmul" else None
        self.mel_filterbank = mel_filterbank(
            self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max,
            self.mel_scale, self.mel_norm,
        )

    def num_frames(self, num_samples):
        return num_stft_frames(num_samples, self.n_fft, self.hop_length, self.center)

    def call(self, waveform):
        dtype = "float64" if self.compute_dtype == "float64" else "float32"
        x = ops.cast(waveform, dtype)
        if len(x.shape) == 3:  # (batch, samples, 1), the PyTorch model's layout
            x = ops.squeeze(x, axis=-1)
        if self.center:
            pad = self.n_fft // 2
            x = ops.pad(x, [[0, 0], [pad, pad]], mode=self.pad_mode)
        spec = self._power_spectrum(x, dtype)  # (batch, frames, n_fft // 2 + 1)
        if self.power != 2.0:
            spec = ops.power(spec, self.power / 2.0)
        mel = ops.matmul(spec, ops.convert_to_tensor(self.mel_filterbank, dtype))  # (batch, frames, mels)
        db = self._to_db(mel)
        db = ops.expand_dims(ops.transpose(db, (0, 2, 1)), -1)  # (batch, mels, frames, 1)
        return ops.cast(db, self.compute_dtype)

    def _power_spectrum(self, x, dtype):
        if self.dft == "fft":
            real, imag = ops.stft(
                x, sequence_length=self.n_fft, sequence_stride=self.hop_length,
                fft_length=self.n_fft, window=ops.convert_to_tensor(self._stft_window, dtype),
                center=False,
            )
            return real * real + imag * imag
        kernel = ops.convert_to_tensor(self._dft_kernel.astype(dtype, copy=False), dtype)
        bins = ops.conv(ops.expand_dims(x, -1), kernel, strides=self.hop_length, padding="valid")
        return ops.square(bins[..., :self.n_fft // 2 + 1]) + ops.square(bins[..., self.n_fft // 2 + 1:])

    def _to_db(self, spec):
        # Python floats, not numpy scalars: those would promote the graph to float64.
        amin_db = float(10.0 * np.log10(self.amin))
        positive = spec > 0
        # The double `where` keeps both the value and the gradient finite at S == 0.
        db = float(10.0 / np.log(10.0)) * ops.log(ops.where(positive, spec, ops.ones_like(spec)))
        db = ops.maximum(ops.where(positive, db, amin_db), amin_db)
        if self.top_db is not None:
            peak = ops.max(db, axis=(1, 2), keepdims=True)  # per example, as torchaudio
            db = ops.maximum(db, peak - self.top_db)
        return db

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_mels, self.num_frames(input_shape[1]), 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
            n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max, mel_scale=self.mel_scale,
            mel_norm=self.mel_norm, power=self.power, normalized=self.normalized,
            center=self.center, pad_mode=self.pad_mode, amin=self.amin, top_db=self.top_db,
            dft=self.dft,
        )
        return config
