"""Track embeddings: chunk-and-mean as in the authors' usage/sample.py, on real audio files."""

import keras
import numpy as np
import pytest
import soundfile as sf
import soxr

from keras_music_ssl import MusicEncoder
from keras_music_ssl.cli import main
from keras_music_ssl.embed import (ResumeMismatchError, chunk_waveform, embed_files,
                                   embed_to_file, embed_waveform, expand_audio_paths,
                                   load_embeddings)

SR = 16000
S = 64000  # one 4-s chunk
BATCH = 4  # every encoder batch here has 4 rows (a last one of 3 is padded): one compiled shape


@pytest.fixture(scope="module")
def encoder():
    from conftest import TINY_ENCODER

    keras.utils.set_random_seed(3)
    return MusicEncoder(**TINY_ENCODER)


def chunk_embedding(encoder, chunk):
    return keras.ops.convert_to_numpy(encoder(chunk[None], training=False))[0]


def by_hand(encoder, path):
    """The definition, step by step: mono, 16 kHz (soxr), peak-normalise, pad, chunk, mean."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    if sr != SR:
        x = soxr.resample(x, sr, SR, quality="HQ").astype(np.float32)
    if np.max(np.abs(x)) > 0:
        x = x / np.max(np.abs(x))
    n_chunks = int(np.ceil(len(x) / S))
    padded = np.concatenate([x, np.zeros(n_chunks * S - len(x), np.float32)])
    return np.mean([chunk_embedding(encoder, padded[k * S:(k + 1) * S])
                    for k in range(n_chunks)], axis=0)


def _music(seconds, sr, channels, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tones = [0.4 * np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
             for f in rng.uniform(100, 2000, channels)]
    noise = 0.05 * rng.standard_normal((len(t), channels))
    return (np.stack(tones, axis=1) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """The issue's cases; 3 + 3 + 3 + 1 + 1 = 11 chunks."""
    folder = tmp_path_factory.mktemp("audio")
    cases = {
        "stereo_44k.flac": (_music(10.0, 44100, 2, 0), 44100, "FLAC", "PCM_16"),
        "mono_22k.mp3": (_music(8.5, 22050, 1, 1), 22050, "MP3", "MPEG_LAYER_III"),
        "mono_22k.ogg": (_music(9.0, 22050, 1, 2), 22050, "OGG", "VORBIS"),
        "short.wav": (_music(1.5, 16000, 1, 3), 16000, "WAV", "PCM_16"),
        "silent.wav": (np.zeros((4 * 44100, 1), np.float32), 44100, "WAV", "PCM_16"),
    }
    paths = []
    for name, (data, sr, fmt, subtype) in cases.items():
        sf.write(folder / name, data, sr, format=fmt, subtype=subtype)
        paths.append(str(folder / name))
    return paths


@pytest.mark.backend_independent
def test_chunk_waveform_zero_pads_the_end_to_whole_chunks():
    x = np.arange(1, 11, dtype=np.float32)

    chunks = chunk_waveform(x, 4)

    np.testing.assert_array_equal(chunks, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]])
    assert chunk_waveform(x[:8], 4).shape == (2, 4)
    assert chunk_waveform(x[:1], 4).tolist() == [[1, 0, 0, 0]]
    with pytest.raises(ValueError, match="empty"):
        chunk_waveform(x[:0], 4)
    with pytest.raises(ValueError, match="mono"):
        chunk_waveform(np.zeros((4, 2)), 4)


def test_embed_waveform_is_the_mean_of_chunk_embeddings(encoder):
    x = _music(25.0, SR, 1, 4)[:, 0]  # 7 chunks: batches of 4 and 3 (zero-padded to 4)
    peak = np.max(np.abs(x))
    padded = np.concatenate([x / peak, np.zeros(7 * S - len(x), np.float32)])
    expected = np.mean([chunk_embedding(encoder, padded[k * S:(k + 1) * S]) for k in range(7)],
                       axis=0)

    got = embed_waveform(encoder, x, batch_size=BATCH)

    assert got.shape == (32,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(embed_waveform(encoder, 0.25 * x, batch_size=BATCH), got, atol=1e-5,
                               rtol=0)  # peak normalisation removes the gain


@pytest.fixture(scope="module")
def embedded(encoder, audio_files):
    return embed_files(encoder, audio_files, batch_size=BATCH, progress=False)


def test_embed_files_matches_chunk_and_mean_by_hand_on_each_format(encoder, audio_files,
                                                                   embedded):
    result = embedded

    assert result.paths == audio_files and result.skipped == []
    assert result.embeddings.shape == (5, 32) and result.embeddings.dtype == np.float32
    assert np.all(np.isfinite(result.embeddings))
    for path, got in zip(audio_files, result.embeddings):
        np.testing.assert_allclose(got, by_hand(encoder, path), atol=1e-5, rtol=0, err_msg=path)


def test_unreadable_files_are_skipped_with_a_reason_and_order_is_kept(encoder, audio_files,
                                                                      tmp_path):
    (tmp_path / "garbage.mp3").write_bytes(b"\x00\x01 not audio " * 50)
    (tmp_path / "empty.wav").write_bytes(b"")
    flac, _, ogg, short, _ = audio_files  # 3 + 3 + 1 chunks
    paths = [flac, str(tmp_path / "missing.ogg"), ogg, str(tmp_path / "garbage.mp3"),
             str(tmp_path / "empty.wav"), short]

    result = embed_files(encoder, paths, batch_size=BATCH, progress=False)

    assert result.paths == [flac, ogg, short]
    assert [(p.rsplit("/", 1)[-1], r.split(":")[0]) for p, r in result.skipped] == [
        ("missing.ogg", "missing"), ("garbage.mp3", "undecodable"), ("empty.wav", "empty")]
    alone = embed_files(encoder, [flac, ogg, short], batch_size=BATCH, progress=False)
    np.testing.assert_allclose(result.embeddings, alone.embeddings, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def preset(encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("preset") / "tiny"
    encoder.save_to_preset(folder, method="test")
    return str(folder)


def test_cli_writes_npz_in_input_order_and_fails_on_skips(audio_files, embedded, preset, tmp_path,
                                                         capsys):
    flac, mp3, ogg, short, silent = audio_files
    out = tmp_path / "emb.npz"
    missing = str(tmp_path / "gone.wav")

    code = main(["embed", ogg, missing, flac, short, mp3, silent, "--preset", preset,
                 "--out", str(out), "--batch-size", str(BATCH)])

    assert code == 1  # a file was skipped; the others are still saved
    assert "gone.wav: missing" in capsys.readouterr().err
    embeddings, paths, extra = load_embeddings(out)
    assert paths == [ogg, flac, short, mp3, silent]
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, 32)
    reference = dict(zip(embedded.paths, embedded.embeddings))
    np.testing.assert_allclose(embeddings, [reference[p] for p in paths], atol=1e-5, rtol=0)
    assert str(extra["preset"]) == preset


def test_resume_keeps_done_files_and_embeds_only_new_ones(encoder, audio_files, tmp_path):
    flac, mp3, ogg, short, silent = audio_files
    copy = tmp_path / "copy.flac"
    copy.write_bytes(open(flac, "rb").read())
    out = tmp_path / "emb.npz"
    embed_to_file(encoder, [copy, mp3, short, silent], out, BATCH, preset="p", progress=False)
    first, _, _ = load_embeddings(out)
    copy.unlink()  # a file that is read again would now be reported missing

    result = embed_to_file(encoder, [copy, mp3, ogg, short, silent], out, BATCH, resume=True,
                           preset="p", progress=False)

    assert result.skipped == []
    embeddings, paths, _ = load_embeddings(out)
    assert paths == [str(copy), mp3, ogg, short, silent]
    np.testing.assert_array_equal(embeddings[[0, 1, 3, 4]], first)
    # Identity is the weights, not the preset's name: the same weights under another name resume,
    # other weights under the same name (a relative preset folder from elsewhere) are refused.
    assert embed_to_file(encoder, [mp3], out, BATCH, resume=True, preset="q", progress=False).paths == [mp3]
    from conftest import TINY_ENCODER

    keras.utils.set_random_seed(4)
    other = MusicEncoder(**TINY_ENCODER)
    with pytest.raises(ResumeMismatchError, match="other weights"):
        embed_to_file(other, [mp3, flac], out, BATCH, resume=True, preset="p", progress=False)
    assert load_embeddings(out)[1] == [mp3]  # refused before anything was written
    # without --resume or overwrite, an existing output is not replaced
    with pytest.raises(ResumeMismatchError, match="exists"):
        embed_to_file(encoder, [mp3], out, BATCH, preset="p", progress=False)


def test_interrupted_run_keeps_what_was_done_and_resumes(encoder, audio_files, tmp_path,
                                                         monkeypatch):
    import keras_music_ssl.embed as embed_module

    flac, _, ogg, short, silent = audio_files
    out = tmp_path / "emb.npz"
    real_load = embed_module.load_audio

    def interrupted(path, **kwargs):
        if path == ogg:
            raise KeyboardInterrupt
        return real_load(path, **kwargs)

    monkeypatch.setattr(embed_module, "load_audio", interrupted)
    with pytest.raises(KeyboardInterrupt):  # 3 + 1 chunks before the interruption
        embed_to_file(encoder, [flac, short, ogg, silent], out, BATCH, save_every=0,
                      progress=False)
    monkeypatch.setattr(embed_module, "load_audio", real_load)
    saved, saved_paths, _ = load_embeddings(out)
    assert saved_paths == [flac, short]

    result = embed_to_file(encoder, [flac, short, ogg, silent], out, BATCH, resume=True,
                           progress=False)  # 3 + 1 new chunks

    assert result.paths == [flac, short, ogg, silent]
    np.testing.assert_array_equal(result.embeddings[:2], saved)


@pytest.mark.backend_independent
def test_folders_expand_to_their_audio_files_in_sorted_order(tmp_path):
    for name in ("b.wav", "a.flac", "notes.txt", "sub/c.mp3"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")

    assert expand_audio_paths([tmp_path, "x.ogg"]) == [
        str(tmp_path / "a.flac"), str(tmp_path / "b.wav"), str(tmp_path / "sub" / "c.mp3"), "x.ogg"]


def test_cli_without_the_named_preset_explains_how_to_get_it(tmp_path, monkeypatch, audio_files,
                                                             capsys):
    monkeypatch.setenv("KMSSL_WEIGHTS_DIR", str(tmp_path))

    code = main(["embed", audio_files[0], "--preset", "deezer_contrastive", "--out",
                 str(tmp_path / "e.npz")])

    assert code == 2
    assert "weights.zip" in capsys.readouterr().err
    assert not (tmp_path / "e.npz").exists()
