"""The decoded-audio cache: the arrays load_audio gives, bit for bit; bad files remembered with their
reason; edited files and damaged entries decoded again; the same batches with or without it."""

import os

import numpy as np
import pytest
import soundfile as sf

import keras_music_ssl.data.audio_cache as audio_cache
from keras_music_ssl.data.audio import AudioError, load_audio
from keras_music_ssl.data.audio_cache import AudioCache
from keras_music_ssl.data.audio_dataset import SkipReport
from keras_music_ssl.data.pipelines import pretraining_dataset

pytestmark = pytest.mark.backend_independent


def stereo_tone(seconds, frequency, sample_rate=44100):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * frequency * t) * (0.5 + t / seconds)
    return np.stack([tone, 0.5 * tone], axis=1).astype(np.float32)


@pytest.fixture()
def folder(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, frequency in enumerate((300.0, 700.0, 1300.0)):
        sf.write(audio / f"track{i}.flac", stereo_tone(10.0 + 2 * i, frequency), 44100)
    (audio / "broken.mp3").write_bytes(np.random.default_rng(0).bytes(3000))
    return audio


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the file")

    monkeypatch.setattr(audio_cache, "load_audio", fail)


def test_cache_gives_load_audios_arrays_and_reads_them_back_without_decoding(folder, tmp_path, monkeypatch):
    path = str(folder / "track1.flac")
    expected = load_audio(path)
    cache = AudioCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache.load(path), expected)
    forbid_decoding(monkeypatch)
    again = AudioCache(tmp_path / "cache")  # a later run
    got = again.load(path)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert (cache.misses, again.hits, again.misses) == (1, 1, 0)
    assert not [name for name in os.listdir(tmp_path / "cache") if name.endswith(".tmp")]


def test_an_unusable_file_is_remembered_with_its_reason(folder, tmp_path, monkeypatch):
    path = str(folder / "broken.mp3")
    with pytest.raises(AudioError) as first:
        AudioCache(tmp_path / "cache").load(path)
    forbid_decoding(monkeypatch)
    with pytest.raises(AudioError) as second:
        AudioCache(tmp_path / "cache").load(path)
    assert second.value.reason == first.value.reason == "undecodable"
    assert second.value.detail == first.value.detail


def test_a_missing_file_is_not_remembered(tmp_path):
    cache = AudioCache(tmp_path / "cache")
    with pytest.raises(AudioError, match="missing"):
        cache.load(str(tmp_path / "nowhere.flac"))
    assert os.listdir(tmp_path / "cache") == []


def test_an_edited_file_and_a_damaged_entry_are_decoded_again(folder, tmp_path):
    path = folder / "track0.flac"
    cache = AudioCache(tmp_path / "cache")
    first = cache.load(str(path))
    sf.write(path, stereo_tone(6.0, 900.0), 44100)  # replaced: other size and time
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    edited = cache.load(str(path))
    assert edited.shape != first.shape
    np.testing.assert_array_equal(edited, load_audio(str(path)))
    for name in os.listdir(tmp_path / "cache"):
        with open(tmp_path / "cache" / name, "wb") as f:
            f.write(b"damaged")
    np.testing.assert_array_equal(cache.load(str(path)), edited)
    assert cache.misses == 3


def test_the_settings_are_part_of_the_key(folder, tmp_path):
    path = str(folder / "track2.flac")
    full = AudioCache(tmp_path / "cache").load(path)
    capped = AudioCache(tmp_path / "cache", max_duration=5.0).load(path)
    assert len(full) == 14 * 16000 and len(capped) == 5 * 16000


def test_a_cache_that_cannot_be_written_turns_itself_off(folder, tmp_path, monkeypatch, caplog):
    cache = AudioCache(tmp_path / "cache")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio_cache.np, "save", full_disk)
    for name in ("track0.flac", "track1.flac"):
        np.testing.assert_array_equal(cache.load(str(folder / name)), load_audio(str(folder / name)))
    assert os.listdir(tmp_path / "cache") == []
    assert sum("cannot write" in record.getMessage() for record in caplog.records) == 1


def test_the_pipeline_gives_the_same_batches_and_skips_with_or_without_the_cache(folder, tmp_path, monkeypatch):
    def batches(cache_dir, report):
        dataset = pretraining_dataset(folder, batch_size=3, seed=4, shuffle_buffer=6, report=report,
                                      cache_dir=cache_dir)
        return [batch.numpy() for batch in dataset.take(4)]  # 12 view sets: each track 4 times

    plain_report, cold_report, warm_report = SkipReport(), SkipReport(), SkipReport()
    plain = batches(None, plain_report)
    cold = batches(tmp_path / "cache", cold_report)
    forbid_decoding(monkeypatch)
    warm = batches(tmp_path / "cache", warm_report)
    for a, b, c in zip(plain, cold, warm):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    reasons = lambda report: {os.path.basename(p): r for p, (r, _) in report.skipped.items()}  # noqa: E731
    assert reasons(plain_report) == reasons(cold_report) == reasons(warm_report) == {"broken.mp3": "undecodable"}
    assert len(os.listdir(tmp_path / "cache")) == 4  # three tracks and one failure
