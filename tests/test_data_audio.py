"""load_audio: each format against soundfile/librosa references, the fallback decoder, and a corpus of
broken files (each usable one loads, each other one raises AudioError with its reason)."""

import os
import pickle

import librosa
import numpy as np
import pytest
import soundfile as sf
import soxr

from keras_music_ssl.data import audio as audio_module
from keras_music_ssl.data.audio import AudioError, load_audio

pytestmark = pytest.mark.backend_independent


def music_like(sample_rate, seconds, channels=1, seed=0):
    """A chord with an envelope plus a little noise, different per channel: (frames, channels) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    columns = []
    for c in range(channels):
        tone = sum(np.sin(2 * np.pi * f * (1 + 0.01 * c) * t) for f in (220.0, 277.2, 329.6, 1760.0))
        columns.append(0.2 * envelope * tone + 0.01 * rng.standard_normal(len(t)))
    return np.stack(columns, axis=1).astype(np.float32)


def make_broken_corpus(folder):
    """The issue's corpus; returns {file name: expected reason, or None for a usable file}."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(7)
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    open(path("empty.wav"), "wb").close()
    with open(path("random_bytes.wav"), "wb") as f:
        f.write(rng.bytes(6000))
    with open(path("random_bytes.mp3"), "wb") as f:
        f.write(rng.bytes(6000))
    sf.write(path("whole.wav"), music_like(16000, 5.0), 16000, subtype="PCM_16")
    with open(path("whole.wav"), "rb") as f:
        wav = f.read()
    with open(path("truncated.wav"), "wb") as f:
        f.write(wav[: len(wav) // 2])
    with open(path("header_only.wav"), "wb") as f:
        f.write(wav[:44])
    sf.write(path("whole.flac"), music_like(16000, 5.0), 16000)
    with open(path("whole.flac"), "rb") as f:
        flac = f.read()
    with open(path("truncated.flac"), "wb") as f:
        f.write(flac[: len(flac) // 2])
    nan = music_like(16000, 5.0)
    nan[5000:5010] = np.nan
    sf.write(path("nan_samples.wav"), nan, 16000, subtype="FLOAT")
    os.makedirs(path("a_directory.wav"), exist_ok=True)
    sf.write(path("short_0.3s.wav"), music_like(16000, 0.3), 16000)
    sf.write(path("eight_channels.wav"), music_like(16000, 5.0, channels=8), 16000)
    sf.write(path("rate_192k.wav"), music_like(192000, 5.0), 192000)
    sf.write(path("rate_8k.wav"), music_like(8000, 5.0), 8000)
    return {
        "empty.wav": "empty", "random_bytes.wav": "undecodable", "random_bytes.mp3": "undecodable",
        "whole.wav": None, "truncated.wav": "truncated", "header_only.wav": "empty", "whole.flac": None,
        "truncated.flac": "truncated", "nan_samples.wav": "non_finite", "a_directory.wav": "missing",
        "short_0.3s.wav": None, "eight_channels.wav": None, "rate_192k.wav": None, "rate_8k.wav": None,
    }


def librosa_reference(path, sample_rate=16000):
    y, _ = librosa.load(path, sr=sample_rate, mono=True, res_type="soxr_hq", dtype=np.float32)
    return y / np.max(np.abs(y))


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_each_format_matches_librosa_at_16k_mono(tmp_path, fmt, subtype):
    path = str(tmp_path / f"clip.{fmt.lower()}")
    sf.write(path, music_like(44100, 3.0, channels=2), 44100, format=fmt, subtype=subtype)
    y = load_audio(path)
    reference = librosa_reference(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 48000) <= 1 and len(y) == len(reference)
    np.testing.assert_allclose(y, reference, atol=2e-6)
    assert np.max(np.abs(y)) == pytest.approx(1.0)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_lossless_16k_mono_decodes_to_the_written_samples(tmp_path, fmt):
    path = str(tmp_path / f"clip.{fmt.lower()}")
    sf.write(path, music_like(16000, 2.0), 16000, format=fmt, subtype="PCM_16")
    written, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(load_audio(path, normalize=False), written)


def test_fallback_decoder_matches_soundfile_when_libsndfile_refuses(tmp_path, monkeypatch):
    path = str(tmp_path / "clip.wav")
    sf.write(path, music_like(22050, 2.0, channels=2), 22050, subtype="PCM_16")
    expected = load_audio(path)

    def refuse(*args, **kwargs):
        raise RuntimeError("format not supported by libsndfile")

    monkeypatch.setattr(audio_module, "_read_soundfile", refuse)
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-6)


def test_undecodable_error_names_both_decoders(broken):
    folder, _ = broken
    with pytest.raises(AudioError) as error:
        load_audio(folder / "random_bytes.wav")
    assert error.value.reason == "undecodable"
    assert "soundfile" in error.value.detail and "audioread" in error.value.detail


def test_broken_corpus_raises_the_right_reason_or_loads(broken):
    folder, expected = broken
    for name, reason in expected.items():
        if reason is None:
            y = load_audio(folder / name)
            assert y.dtype == np.float32 and np.all(np.isfinite(y)) and np.max(np.abs(y)) == pytest.approx(1.0), name
        else:
            with pytest.raises(AudioError) as error:
                load_audio(folder / name)
            assert error.value.reason == reason, (name, error.value)


def test_missing_file_is_missing(tmp_path):
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path / "nope.flac")
    assert error.value.reason == "missing"


def test_eight_channels_are_averaged(broken):
    folder, _ = broken
    source, _ = sf.read(folder / "eight_channels.wav", dtype="float32")
    mono = source.mean(axis=1)
    np.testing.assert_allclose(load_audio(folder / "eight_channels.wav"), mono / np.max(np.abs(mono)), atol=1e-6)


@pytest.mark.parametrize("name,rate", [("rate_192k.wav", 192000), ("rate_8k.wav", 8000)])
def test_other_rates_are_resampled_like_soxr_hq(broken, name, rate):
    folder, _ = broken
    source, source_rate = sf.read(folder / name, dtype="float32")
    assert source_rate == rate
    expected = soxr.resample(source, rate, 16000, quality="HQ")
    y = load_audio(folder / name)
    assert len(y) == 80000
    np.testing.assert_allclose(y, expected / np.max(np.abs(expected)), atol=1e-6)
    np.testing.assert_allclose(y, librosa_reference(str(folder / name)), atol=2e-6)


def test_too_short_only_below_min_duration(broken):
    folder, _ = broken
    assert len(load_audio(folder / "short_0.3s.wav")) == 4800
    with pytest.raises(AudioError) as error:
        load_audio(folder / "short_0.3s.wav", min_duration=1.0)
    assert error.value.reason == "too_short"


def test_max_duration_decodes_only_the_first_seconds(tmp_path):
    path = str(tmp_path / "long.flac")
    source = music_like(44100, 10.0)[:, 0]
    sf.write(path, source, 44100, subtype="PCM_24")
    decoded, _ = sf.read(path, dtype="float32")
    y = load_audio(path, normalize=False, max_duration=2.5)
    np.testing.assert_allclose(y, soxr.resample(decoded[: int(2.5 * 44100)], 44100, 16000, quality="HQ"), atol=1e-7)
    assert len(y) == 40000


def test_normalize_false_keeps_the_level(tmp_path):
    path = str(tmp_path / "quiet.wav")
    quiet = 0.1 * music_like(16000, 1.0)
    sf.write(path, quiet, 16000, subtype="FLOAT")
    assert np.max(np.abs(load_audio(path, normalize=False))) == pytest.approx(np.max(np.abs(quiet)))


def test_audio_error_survives_pickling_for_worker_processes():
    error = pickle.loads(pickle.dumps(AudioError("x.wav", "truncated", "10 of 20 frames")))
    assert (error.path, error.reason, error.detail) == ("x.wav", "truncated", "10 of 20 frames")
    with pytest.raises(ValueError):
        AudioError("x.wav", "no_such_reason")


def test_samples_that_overflow_in_resampling_are_non_finite_not_silence(tmp_path):
    """Float samples of +-1e38 are finite in the file; soxr's filter overflows float32 on them.
    Before: the check ran before resampling, and the inf/NaN became a silent or all-NaN track."""
    huge = np.where(np.random.default_rng(0).random((44100, 2)) > 0.5, 1e38, -1e38).astype(np.float32)
    sf.write(tmp_path / "huge_44k.wav", huge, 44100, subtype="FLOAT")
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path / "huge_44k.wav")
    assert error.value.reason == "non_finite" and "after mixing/resampling" in error.value.detail
    sf.write(tmp_path / "huge_16k.wav", huge, 16000, subtype="FLOAT")  # no resampling: finite, a valid file
    y = load_audio(tmp_path / "huge_16k.wav")
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) == 1.0


def test_to_int16_refuses_nan_instead_of_casting_it_to_a_number():
    from keras_music_ssl.data.tfrecord import to_int16

    np.testing.assert_array_equal(to_int16(np.array([0.0, 1.0, -1.0, 2.0], np.float32)), [0, 32767, -32767, 32767])
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        to_int16(np.array([0.0, np.nan], np.float32))


def test_a_file_name_that_is_not_utf8_loads_and_is_named_printably(tmp_path):
    """os.listdir gives such a name with surrogate escapes; libsndfile's str path refused it, so the
    file was "undecodable" (prepare) or stopped the run. ``kmssl embed FOLDER`` lists it too."""
    from keras_music_ssl.embed import expand_audio_paths

    cafe, broken = os.fsdecode(b"caf\xe9.wav"), os.fsdecode(b"bad\xff.wav")
    sf.write(os.fsencode(tmp_path / cafe), music_like(16000, 1.0), 16000)
    sf.write(tmp_path / "cafe.wav", music_like(16000, 1.0), 16000)
    with open(os.fsencode(tmp_path / broken), "wb") as f:
        f.write(b"junk" * 100)
    assert expand_audio_paths([tmp_path]) == [str(tmp_path / name) for name in (broken, "cafe.wav", cafe)]
    np.testing.assert_array_equal(load_audio(tmp_path / cafe), load_audio(tmp_path / "cafe.wav"))
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path / broken)
    assert error.value.reason == "undecodable" and error.value.path == str(tmp_path / broken)
    assert str(error.value).startswith(f"{tmp_path}/bad\\xff.wav: undecodable")
    str(error.value).encode("utf-8")  # printable: no lone surrogate left in the message
