"""Audio for full-integer calibration and for tests: synthetic clips, and the calibration
samples that give every signature of a model data."""

import numpy as np

from keras_music_ssl.track import peak_normalize


def synthetic_clips(count, clip_samples=64000, sample_rate=16000, seed=0):
    """Varied 4 s test/calibration audio: tones, chords, noise, chirps, clicks, silence.

    Peak-normalised like real inputs (silence stays zero). float32 (count, clip_samples).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(clip_samples) / sample_rate
    clips = np.zeros((count, clip_samples), np.float32)
    for i in range(count):
        kind = i % 6
        if kind == 0:  # a pure tone
            x = np.sin(2 * np.pi * rng.uniform(50, 4000) * t)
        elif kind == 1:  # a chord of decaying harmonic notes
            x = sum(np.exp(-t * rng.uniform(0.5, 3)) * np.sin(2 * np.pi * f0 * k * t) / k
                    for f0 in rng.uniform(80, 800, 3) for k in range(1, 5))
        elif kind == 2:  # coloured noise
            x = np.cumsum(rng.normal(size=clip_samples)) * rng.uniform(0, 1) + rng.normal(size=clip_samples)
            x = x - np.convolve(x, np.ones(64) / 64, mode="same")
        elif kind == 3:  # a chirp
            f0, f1 = rng.uniform(40, 400), rng.uniform(1000, 7900)
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
        elif kind == 4:  # a drum-like pattern: clicks with decaying noise over a bass line
            x = np.sin(2 * np.pi * rng.uniform(40, 120) * t)
            beat = int(sample_rate * rng.uniform(0.25, 0.6))
            env = np.exp(-np.arange(beat) / (0.03 * sample_rate))
            for start in range(0, clip_samples - beat, beat):
                x[start:start + beat] += 2 * env * rng.normal(size=beat)
        else:  # silence for a random part, then noise
            x = rng.normal(size=clip_samples) * (t > rng.uniform(0, 3.5))
        clips[i] = peak_normalize(x)
    return clips


def calibration_samples(model, meta, clips):
    """(signature, inputs) pairs for full-integer calibration: every signature gets data."""
    encoder = model.encoder if meta["kind"] == "tagger" else model
    clip, track = ("tag", "tag_track") if meta["kind"] == "tagger" else ("embed", "embed_track")
    samples = [(clip, {"waveform": c[None]}) for c in clips]
    # Tracks of 1 to 3 chunks made of the same clips; the track graph peak-normalises.
    samples += [(track, {"waveform": clips[i:i + 1 + i % 3].reshape(-1)}) for i in range(0, len(clips), 4)]
    if meta["kind"] == "tagger":
        embeddings = np.asarray(encoder.predict(clips, batch_size=8, verbose=0), np.float32)
        samples += [("head", {"embedding": e[None]}) for e in embeddings]
    return samples
