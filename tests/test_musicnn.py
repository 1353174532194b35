"""musicnn's taggers (``keras_music_ssl/musicnn/``) against musicnn's own code, on every backend.

The reference is the musicnn 0.1.0 wheel's own model code and checkpoints, run under TensorFlow
with ``tf_keras`` in a subprocess (``musicnn_reference.py``, which says what it changes: the
float16 multiply, and a bug of the extractor it avoids). The wheel (``musicnn_fixtures.py``) comes from
``$KMSSL_MUSICNN_WHEEL`` (a file or its folder), else a cache in the temporary folder, else
``pip download musicnn==0.1.0 --no-deps`` into that cache; without it the tests skip, saying so.
The reference outputs are cached there too (keyed by the clips, the script and the versions), so
only the first backend pays for them.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

from musicnn_fixtures import CACHE, SR, music

from keras_music_ssl.musicnn import track
from keras_music_ssl.musicnn.release import WHEEL_ENV, WHEEL_NAME, WHEEL_SHA256

TOLERANCE = 1e-3  # absolute, on probabilities and penultimate features (the issue's)
TESTS = pathlib.Path(__file__).parent
ROOT = TESTS.parent
PARITY_PRESETS = {"musicnn_mtt": "MTT_musicnn", "vgg_mtt": "MTT_vgg", "musicnn_msd": "MSD_musicnn", "vgg_msd": "MSD_vgg"}
MTT_PRESETS = ["musicnn_mtt", "vgg_mtt"]  # the padding and float16 studies: the MSD models are built alike


def make_clips():
    return {
        "music": music(4.5, 0),
        "silent": np.zeros(int(3.5 * SR), np.float32),
        # Clipped full-scale noise: mel values far above 6.55, where the original's float16 product overflows.
        "loud": np.clip(np.random.default_rng(1).standard_normal(int(3.2 * SR)) * 3, -1, 1).astype(np.float32),
        "exact_3s": music(3.0, 2),  # 48,000 samples: 188 frames, one patch
        "long": music(10.5, 3),  # three patches: the second and third see their neighbours' audio at the borders
    }


CLIPS = make_clips()


# --- the wheel, the reference, the converted presets --------------------------------------------

@pytest.fixture(scope="module")
def reference(unpacked):
    """The original's outputs (``musicnn_reference.py``), computed once and cached across backends."""
    import librosa
    import tensorflow as tf

    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("the reference needs tf_keras (musicnn builds its graph with tf.compat.v1.layers): "
                    "pip install 'tf_keras==2.21.*' (the test extra)")
    digest = hashlib.sha256()
    for part in ((TESTS / "musicnn_reference.py").read_bytes(), WHEEL_SHA256.encode(), librosa.__version__.encode(),
                 tf.__version__.encode(), *(CLIPS[name].tobytes() for name in sorted(CLIPS))):
        digest.update(part)
    out = CACHE / f"reference-{digest.hexdigest()[:16]}.npz"
    if not out.is_file():
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            clips, partial = pathlib.Path(work) / "clips.npz", pathlib.Path(work) / "reference.npz"
            np.savez(clips, **CLIPS)
            env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
            env.pop("KERAS_BACKEND", None)
            done = subprocess.run([sys.executable, str(TESTS / "musicnn_reference.py"), str(unpacked), str(clips),
                                   str(partial)], capture_output=True, text=True, timeout=900, env=env)
            assert done.returncode == 0, done.stderr[-3000:]
            os.replace(partial, out)
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def _load(folder, **changes):
    """The preset's model, rebuilt with ``changes`` to its config (same weights)."""
    from keras_music_ssl.presets import load_preset

    model = load_preset(folder)
    if not changes:
        return model
    config = model.get_config()
    config.update({k: v for k, v in changes.items() if k != "frontend"})
    config["frontend"] = {**config["frontend"], **changes.get("frontend", {})}
    other = type(model).from_config(config)
    other.set_weights(model.get_weights())
    return other


MEASURED = {}


def _measure(presets, reference, name, padding, **changes):
    """:func:`_errors` of the preset ``name`` rebuilt with ``changes``, measured once per session."""
    key = (name, padding, json.dumps(changes, sort_keys=True))
    if key not in MEASURED:
        MEASURED[key] = _errors(_load(presets[name], **changes), reference, PARITY_PRESETS[name], padding)
    return MEASURED[key]


def _errors(model, reference, original, padding):
    """``{(clip, output): max abs error}`` of ``model.track`` against the reference."""
    errors = {}
    for clip, waveform in CLIPS.items():
        out = model.track(waveform)
        for key, ours in (("taggram", out["taggram"]), ("penultimate", out["penultimate"])):
            theirs = reference[f"{original}/{padding}/{clip}/{key}"]
            assert ours.shape == theirs.shape, (clip, key)
            assert np.all(np.isfinite(ours)), (clip, key)
            errors[clip, key] = float(np.max(np.abs(ours - theirs)))
        np.testing.assert_allclose(out["probabilities"], out["taggram"].mean(axis=0), rtol=0, atol=1e-7)
    return errors


def _show(title, errors):
    print(f"\n{title}: " + ", ".join(f"{clip}/{key} {error:.1e}" for (clip, key), error in errors.items()))


# --- parity with the original ------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PARITY_PRESETS))
def test_preset_gives_the_original_taggram_and_penultimate_on_five_clips(name, presets, reference):
    """The preset (librosa's reflect centring, as musicnn was released and trained) against the
    original's code computing its spectrogram the same way."""
    errors = _measure(presets, reference, name, "reflect")
    _show(f"{name}, max abs error", errors)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("name", MTT_PRESETS)
def test_zero_padding_gives_the_original_under_todays_librosa(name, presets, reference):
    """Since librosa 0.10 the original call pads with zeros; ``pad_mode="constant"`` is that."""
    librosa_mode = str(reference["librosa_pad_mode"])
    errors = _measure(presets, reference, name, "librosa", pad_mode=librosa_mode)
    _show(f"{name}, pad_mode={librosa_mode}, max abs error", errors)
    assert max(errors.values()) < TOLERANCE, errors
    # The two paddings differ well beyond the tolerance (the max-pooled edge frames): the choice matters.
    other = reference[f"{PARITY_PRESETS[name]}/reflect/music/penultimate"]
    assert np.max(np.abs(other - reference[f"{PARITY_PRESETS[name]}/librosa/music/penultimate"])) > 10 * TOLERANCE


def test_float16_rounding_of_the_mel_brings_the_outputs_ten_times_closer(presets, reference):
    """The models were trained on float16 spectrograms; without the rounding they stay within the
    tolerance, but several times further from the original than with it."""
    for name in MTT_PRESETS:
        kept = _measure(presets, reference, name, "reflect")
        dropped = _measure(presets, reference, name, "reflect", frontend={"float16_mel": False})
        _show(f"{name} without the float16 rounding", dropped)
        for key in ("taggram", "penultimate"):
            with_rounding = max(e for (_, k), e in kept.items() if k == key)
            without = max(e for (_, k), e in dropped.items() if k == key)
            assert without < TOLERANCE and without > 3 * with_rounding, (name, key, with_rounding, without)


def test_frontend_matmul_dft_equals_the_fft_and_round_trips_its_config():
    """``dft="matmul"`` (for converters without RFFT) is the same transform as ``keras.ops.stft``."""
    import keras

    from keras_music_ssl.musicnn import MusicnnLogMel

    patches = track.patches(CLIPS["music"])
    fft, matmul = MusicnnLogMel(float16_mel=False), MusicnnLogMel(float16_mel=False, dft="matmul")
    a, b = (keras.ops.convert_to_numpy(layer(patches)) for layer in (fft, matmul))
    assert a.shape == (1, 187, 96)
    np.testing.assert_allclose(a, b, atol=2e-4)  # log10(1 + 1e4 mel): float32 round-off of two DFTs
    again = MusicnnLogMel.from_config(matmul.get_config())
    assert again.get_config() == matmul.get_config() and again.dft == "matmul" and again.float16_mel is False


@pytest.mark.backend_independent
def test_the_loud_clip_overflows_the_originals_float16_product():
    import librosa

    mel = librosa.feature.melspectrogram(y=CLIPS["loud"], sr=SR, n_fft=512, hop_length=256, n_mels=96)
    with np.errstate(over="ignore"):
        original = np.log10(10000 * mel.astype(np.float16) + 1)  # the original's line, float16 throughout
    assert mel.max() > 6.55 and np.isinf(original).any()


@pytest.mark.backend_independent
@pytest.mark.parametrize("seconds, patches", [(3.0, 1), (2.99, 1), (5.98, 2), (10.5, 3), (0.5, 1)])
def test_a_track_is_cut_into_the_originals_patches(seconds, patches):
    waveform = np.random.default_rng(0).uniform(-1, 1, int(seconds * SR)).astype(np.float32)
    cut = track.patches(waveform)
    assert cut.shape == (patches, track.patch_samples()) == (patches, 48128)
    frames = 1 + waveform.size // 256
    if frames >= 187:  # the original's patches: range(0, frames - 187 + 1, 187)
        assert len(range(0, frames - 187 + 1, 187)) == patches
        n = min(48128 - 256, waveform.size)  # patch 0: 256 padded samples, then the track (and padding after it)
        np.testing.assert_array_equal(cut[0, 256:256 + n], waveform[:n])
        if patches > 1:
            m = min(48128, waveform.size - (47872 - 256))  # patch 1: from 256 samples before frame 187 on
            np.testing.assert_array_equal(cut[1, :m], waveform[47872 - 256:47872 - 256 + m])
    with pytest.raises(ValueError, match="empty"):
        track.patches(np.zeros(0, np.float32))


# --- presets, saving, cards ----------------------------------------------------------------------

def test_presets_round_trip_through_save_to_preset_and_keras_files(presets, tmp_path):
    import keras

    from keras_music_ssl.musicnn import Musicnn, Vgg
    from keras_music_ssl.presets import resolve_preset

    assert resolve_preset("musicnn_mtt", presets["musicnn_mtt"].parent) == presets["musicnn_mtt"]
    patch = track.patches(CLIPS["music"])[:1]
    for name, cls in (("musicnn_mtt", Musicnn), ("vgg_msd", Vgg)):
        model = cls.from_preset(presets[name])
        expected = {k: keras.ops.convert_to_numpy(v) for k, v in model(patch, training=False).items()}
        model.save_to_preset(tmp_path / name)
        model.save(tmp_path / f"{name}.keras")
        for loaded in (cls.from_preset(tmp_path / name), keras.saving.load_model(tmp_path / f"{name}.keras")):
            assert type(loaded) is cls and loaded.get_config() == model.get_config()
            assert loaded.tags == model.tags and len(loaded.tags) == 50
            for key, value in loaded(patch, training=False).items():
                np.testing.assert_array_equal(keras.ops.convert_to_numpy(value), expected[key])
    from keras_music_ssl import MusicEncoder, KmsslError

    with pytest.raises(TypeError, match="holds a Vgg, not a Musicnn") as error:
        Musicnn.from_preset(presets["vgg_mtt"])
    assert isinstance(error.value, KmsslError)  # one line in any kmssl command (embed, export: no tagger there)
    with pytest.raises(KmsslError, match="holds a Musicnn, not a MusicEncoder"):
        MusicEncoder.from_preset(presets["musicnn_mtt"])


def test_converted_presets_carry_their_tags_licence_and_reported_results(presets):
    from test_card import read_card

    expected = {"musicnn_mtt": ("MagnaTagATune", 0.907, 0.383), "musicnn_msd": ("Million Song Dataset", 0.880, 0.289),
                "vgg_mtt": ("MagnaTagATune", 0.903, 0.382), "vgg_msd": ("Million Song Dataset", 0.877, 0.282)}
    for name, (dataset, roc, pr) in expected.items():
        fields, text = read_card(presets[name])
        meta = json.loads((presets[name] / "metadata.json").read_text())
        config = json.loads((presets[name] / "config.json").read_text())["config"]
        assert fields["license"] == "isc" and fields["pipeline_tag"] == "audio-classification"
        assert "musicnn" in fields["tags"] and "self-supervised-learning" not in fields["tags"]
        assert len(config["tags"]) == 50 and (config["tags"][:2] == ["guitar", "classical"]) == ("mtt" in name)
        assert meta["dataset"]["name"] == dataset and "licence" in meta["dataset"]
        assert round(meta["reported_results"]["roc_auc_macro"], 3) == roc
        assert round(meta["reported_results"]["pr_auc_macro"], 3) == pr
        assert meta["source"]["sha256"] == WHEEL_SHA256
        assert f"ROC-AUC of {roc:.3f}" in text and "ISC licence" in text and "@inproceedings{pons2019musicnn" in text
        # ISC asks for its notice in every copy: the wheel's LICENSE.md, quoted in the card
        assert meta["licence_notice"].startswith("Copyright (c) Music Technology Group")
        assert "> Permission to use, copy, modify, and/or distribute this software" in text
        assert f"kmssl tag song.mp3 --preset {name}" in text and "`(batch, 48128)`" in text


# --- the converter and the release ---------------------------------------------------------------

def _write_checkpoint(variables, prefix):
    import tensorflow as tf

    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=list(variables), shape_and_slices=[""] * len(variables),
                      tensors=[tf.constant(value) for value in variables.values()])
    return prefix


@pytest.mark.tf_only  # writes TF1 checkpoints (the converter itself is checked on every backend above)
def test_converter_refuses_a_tampered_checkpoint_naming_the_variable(unpacked, tmp_path):
    from keras_music_ssl.musicnn import Musicnn
    from keras_music_ssl.musicnn.convert import CheckpointError, load_checkpoint_weights, read_checkpoint

    variables = read_checkpoint(f"{unpacked}/musicnn/MTT_musicnn/")
    assert len(variables) == 64 and not any("Adam" in name for name in variables)  # of 150: 86 are Adam's
    model = Musicnn([f"tag{i}" for i in range(50)])
    before = [w.copy() for w in model.get_weights()]
    missing = {k: v for k, v in variables.items() if k != "conv2d_5/kernel"}
    transposed = {**variables, "dense/kernel": variables["dense/kernel"].T}
    extra = {**variables, "conv2d_8/kernel": variables["conv2d_7/kernel"]}
    cases = [(missing, "lacks the variable conv2d_5/kernel"),
             (transposed, r"variable dense/kernel has shape \(200, 1506\), but .* needs \(1506, 200\)"),
             (extra, "no place for: conv2d_8/kernel"),
             (read_checkpoint(f"{unpacked}/musicnn/MTT_vgg/"), "lacks the variable conv2d/kernel")]
    for i, (tampered, message) in enumerate(cases):
        prefix = _write_checkpoint(tampered, tmp_path / f"case{i}" / "ckpt")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint_weights(model, read_checkpoint(prefix))
        for old, new in zip(before, model.get_weights()):
            np.testing.assert_array_equal(old, new)  # refused before anything was assigned
    with pytest.raises(CheckpointError, match="not a readable TensorFlow checkpoint"):
        read_checkpoint(tmp_path / "nothing-here" / "ckpt")
    # Optimizer slots are the optimizer's: a checkpoint with them converts.
    slots = {**variables, "dense/kernel/Adam": variables["dense/kernel"], "beta1_power": np.float32(0.9)}
    load_checkpoint_weights(model, read_checkpoint(_write_checkpoint(slots, tmp_path / "slots" / "ckpt")))


@pytest.mark.backend_independent
def test_a_wheel_that_is_not_musicnns_is_refused_and_leaves_nothing(wheel, tmp_path):
    from keras_music_ssl.musicnn.release import ReleaseError, fetch_presets

    other = tmp_path / "elsewhere" / WHEEL_NAME
    other.parent.mkdir()
    other.write_bytes(wheel.read_bytes()[:-1] + b"x")
    with pytest.raises(ReleaseError, match="not the musicnn 0.1.0 wheel of PyPI"):
        fetch_presets(tmp_path / "weights", source=other.parent)
    assert [p.name for p in (tmp_path / "weights").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.backend_independent
def test_offline_without_the_wheel_says_where_to_put_it(tmp_path, monkeypatch):
    from keras_music_ssl.musicnn.release import ReleaseError
    from keras_music_ssl.presets import resolve_preset

    monkeypatch.delenv(WHEEL_ENV, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip's own offline switch: the download fails at once
    with pytest.raises(ReleaseError) as error:
        resolve_preset("vgg_msd", tmp_path)
    message = str(error.value)
    assert "pip download musicnn==0.1.0" in message and str(tmp_path / WHEEL_NAME) in message
    assert WHEEL_ENV in message and "\n" not in message
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(ReleaseError, match=f"set {WHEEL_ENV} to the file or its folder"):
        resolve_preset("vgg_msd", tmp_path)


# --- kmssl tag --preset --------------------------------------------------------------------------

def kmssl(*argv, **env):
    done = subprocess.run([sys.executable, "-m", "keras_music_ssl", *map(str, argv)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
    return done.returncode, done.stdout, done.stderr


def test_kmssl_tag_with_a_musicnn_preset_converts_once_then_works_offline(wheel, reference, tmp_path):
    import soundfile as sf

    songs = []
    for name in ("music", "long"):
        songs.append(tmp_path / f"{name}.wav")
        sf.write(songs[-1], CLIPS[name], SR, subtype="FLOAT")  # float samples: decoded unchanged
    weights = tmp_path / "weights"
    offline = {"KMSSL_WEIGHTS_DIR": str(weights), "PIP_NO_INDEX": "1"}  # pip may not reach any index

    code, out, err = kmssl("tag", *songs, "--preset", "musicnn_mtt", "--json", "--top", "3",
                           **offline, **{WHEEL_ENV: str(wheel)})
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["model"] == "musicnn_mtt" and report["skipped"] == []
    from keras_music_ssl.musicnn.release import tag_lists

    with zipfile.ZipFile(wheel) as archive:
        tags = tag_lists(archive.read("musicnn/configuration.py").decode())["MTT"]
    for result, name in zip(report["results"], ("music", "long")):
        mean = reference[f"MTT_musicnn/reflect/{name}/taggram"].mean(axis=0)
        best = np.argsort(-mean, kind="stable")[:3]
        assert result["num_chunks"] == len(reference[f"MTT_musicnn/reflect/{name}/taggram"])
        assert [item["tag"] for item in result["tags"]] == [tags[i] for i in best]
        np.testing.assert_allclose([item["score"] for item in result["tags"]], mean[best], atol=TOLERANCE)
    assert sorted(p.name for p in weights.iterdir() if not p.name.startswith(".")) == [
        "musicnn_msd", "musicnn_mtt", "vgg_msd", "vgg_mtt"]  # the wheel given is kept where it was

    env = {k: v for k, v in os.environ.items() if k != WHEEL_ENV}
    done = subprocess.run([sys.executable, "-m", "keras_music_ssl", "tag", str(songs[0]), "--preset", "vgg_mtt"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "2", **offline})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == str(songs[0]) and len(done.stdout.splitlines()) == 6


@pytest.mark.tf_only  # the CLI checks the preset's class before any computation: the same on every backend
def test_kmssl_tag_refuses_an_encoder_preset_in_one_line(tmp_path):
    from conftest import TINY_ENCODER

    from keras_music_ssl import MusicEncoder

    MusicEncoder(**TINY_ENCODER).save_to_preset(tmp_path / "encoder")
    from keras_music_ssl.cli import main

    assert main(["tag", str(tmp_path / "x.wav"), "--preset", str(tmp_path / "encoder")]) == 2


# --- musicnn as a supervised reference in the probe ----------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("samples, starts", [(64000, [0, 15872]), (48128, [0]), (96000, [0, 47872]),
                                             (100000, [0, 47872, 51872])])
def test_patches_cover_a_clip_to_its_last_sample(samples, starts):
    from keras_music_ssl.musicnn.features import patch_starts

    assert patch_starts(samples, 48128, 47872) == starts
    assert starts[-1] + 48128 == samples  # the last patch ends with the clip
    with pytest.raises(ValueError, match="shorter than one patch"):
        patch_starts(48127, 48128, 47872)


def test_patch_features_average_the_taggers_features_over_the_covering_patches(presets, tmp_path):
    import keras

    from keras_music_ssl.musicnn.features import PatchFeatures
    from keras_music_ssl.presets import load_preset

    tagger = load_preset(presets["musicnn_mtt"])
    clips = np.stack([music(4.0, 10), music(4.0, 11, peak=1.0), np.zeros(64000, np.float32)])
    for features, width in (("penultimate", 200), ("probabilities", 50)):
        model = PatchFeatures(tagger, features=features)
        assert (model.num_samples, model.output_dim, model.sample_rate) == (64000, width, SR)
        got = model.predict_on_batch(clips)
        # independently: the tagger on the two patches cut by hand, then their mean
        parts = [keras.ops.convert_to_numpy(tagger(clips[:, s:s + 48128], training=False)[features]) for s in (0, 15872)]
        np.testing.assert_allclose(got, (parts[0] + parts[1]) / 2, rtol=0, atol=1e-5)
    model.save(tmp_path / "features.keras")
    again = keras.saving.load_model(tmp_path / "features.keras")
    assert again.get_config() == model.get_config()
    np.testing.assert_array_equal(again.predict_on_batch(clips), got)


def test_kmssl_probe_takes_a_musicnn_preset_as_a_supervised_reference(presets, tmp_path, capsys, monkeypatch):
    from probe_fixtures import split_sizes, write_generic

    from keras_music_ssl.cli import main
    from keras_music_ssl.probe.models import resolve_model, supervised_reference

    spec, _ = write_generic(tmp_path / "data", seconds=5.0, sizes=split_sizes(6, 3, 4))
    out = tmp_path / "report"
    assert main(["probe", spec, "--model", str(presets["musicnn_mtt"]), "--out", str(out), "--bootstrap", "5",
                 "--epochs", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["musicnn_mtt", "logmel-stats"]
    assert 0 <= results["models"]["musicnn_mtt"]["test"]["roc_auc_macro"]["point"] <= 1
    # the features the probe saw are the 200 penultimate ones, keyed by their own fingerprint
    probed = resolve_model(str(presets["musicnn_mtt"]))
    assert probed.model.output_dim == 200 and results["models"]["musicnn_mtt"]["fingerprint"] == probed.fingerprint
    other = resolve_model(str(presets["vgg_mtt"]))
    assert other.model.output_dim == 256 and other.fingerprint != probed.fingerprint
    # a reference that cannot be had (its download fails) is left out with its reason, not an error;
    # a name that is no preset is the user's mistake, refused
    capsys.readouterr()
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "no-wheel-here.whl"))
    assert supervised_reference("vgg_msd", weights_dir=tmp_path / "offline") == [] and supervised_reference(None) == []
    assert "the supervised reference vgg_msd is left out:" in capsys.readouterr().err
    from keras_music_ssl.presets import PresetNotFoundError

    with pytest.raises(PresetNotFoundError):
        supervised_reference(str(tmp_path / "nowhere"))
