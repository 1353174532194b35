"""How a track becomes musicnn's 3 s patches: librosa's centred frames, cut as ``extractor.py`` cuts them.

musicnn's ``extractor.batch_data`` computes one centred mel spectrogram of the whole track (frame
``j`` centred on sample ``256 j``; the track padded by ``n_fft // 2 = 256`` samples at both ends)
and cuts it into consecutive, non-overlapping patches of 187 frames, dropping the frames left
over at the end. Patch ``k`` is frames ``187 k`` to ``187 k + 186``: the samples ``47,872 k - 256``
to ``47,872 k + 47,872 + 255`` of the track, i.e. 48,128 samples (3.008 s) starting every 47,872
samples (2.992 s). Cutting those windows from the once-padded track and framing each one without
padding (``MusicnnLogMel(center=False)``) gives exactly the original's patches, neighbouring
audio included at the patch borders.

A track of ``n`` samples has ``1 + n // 256`` frames and ``(1 + n // 256) // 187`` patches; the
original fails on a track with none (shorter than 2.976 s). Here such a track is repeated until
it fills one patch, as musicnn's training repeated short clips (``"pad_short": "repeat-pad"`` in
each model's ``config.json``). An empty track is an error.
"""

import numpy as np

from keras_music_ssl.track import UnusableTrack, require_samples

N_FFT = 512
HOP = 256
PATCH_FRAMES = 187  # librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1


def patch_samples(frames=PATCH_FRAMES, hop=HOP, n_fft=N_FFT):
    """Samples of one patch's frames: ``(frames - 1) * hop + n_fft`` (48,128)."""
    return (frames - 1) * hop + n_fft


def patches(waveform, frames=PATCH_FRAMES, hop=HOP, n_fft=N_FFT, pad_mode="reflect"):
    """(samples,) -> (patches, patch_samples) float32: the windows whose frames are the patches."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform (samples,), got shape {waveform.shape}")
    require_samples(waveform)
    if not np.all(np.isfinite(waveform)):
        raise UnusableTrack("non_finite", "the waveform holds NaN or infinite samples")
    shortest = (frames - 1) * hop  # 1 + n // hop >= frames
    if waveform.size < shortest:
        waveform = np.tile(waveform, -(-shortest // waveform.size))
    padded = np.pad(waveform, n_fft // 2, mode=pad_mode)
    length, step = patch_samples(frames, hop, n_fft), frames * hop
    count = (1 + waveform.size // hop) // frames
    return np.stack([padded[k * step:k * step + length] for k in range(count)])
