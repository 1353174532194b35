"""Exports of musicnn's taggers (``PatchTagger``: ``Musicnn``, ``Vgg``): raw audio in, musicnn's track rule
inside the graph, built-in ops only; ``kmssl export --preset musicnn_mtt`` and ``kmssl tag --model`` on it.

musicnn_mtt is exported once per float format for the module (about 2-4 s each); each test checks
one property. The reference is the Keras model: ``model.track(w)`` (musicnn's patches, the mean of
their probabilities, no normalisation) and ``model(patches)``. The wheel and the converted presets
are ``musicnn_fixtures.py``'s.
"""

import json

import numpy as np
import pytest
from musicnn_fixtures import SR, music

from keras_music_ssl.cli import main
from keras_music_ssl.export import ExportError, export, load_exported, read_metadata, tflite_operators
from keras_music_ssl.export.metadata import checked_metadata
from keras_music_ssl.export.tflite import FORBIDDEN_OPS
from keras_music_ssl.track import UnusableTrack

pytestmark = pytest.mark.tf_only

TOLERANCE = 1e-4  # absolute, on probabilities and the mean penultimate features
FORMATS = ("savedmodel", "tflite", "onnx")
TRACKS = {
    "music_10.5s": music(10.5, 3),  # three patches
    "exactly_3s": music(3.0, 2),
    "short_0.5s": music(0.5, 5),  # tiled to one patch
    "silent_3.5s": np.zeros(int(3.5 * SR), np.float32),
    "loud_clipped": np.clip(np.random.default_rng(1).standard_normal(int(3.2 * SR)) * 3, -1, 1).astype(np.float32),
}
PATCHES = {"music_10.5s": 3, "exactly_3s": 1, "short_0.5s": 1, "silent_3.5s": 1, "loud_clipped": 1}


def _path(root, fmt, name="musicnn_mtt"):
    return root / (f"{name}.tflite" if fmt == "tflite" else f"{name}_{fmt}")


@pytest.fixture(scope="module")
def mtt(presets):
    from keras_music_ssl.presets import load_preset

    return load_preset(presets["musicnn_mtt"])


@pytest.fixture(scope="module")
def exports(mtt, presets, tmp_path_factory):
    from keras_music_ssl.presets import preset_metadata

    root = tmp_path_factory.mktemp("musicnn-exports")
    for fmt in FORMATS:
        export(mtt, _path(root, fmt), fmt, metadata=preset_metadata(presets["musicnn_mtt"]))
    return root


@pytest.fixture(scope="module")
def expected(mtt):
    """Keras ``model.track`` of each track, computed once."""
    return {name: mtt.track(waveform) for name, waveform in TRACKS.items()}


def _track_errors(runner, expected):
    errors = {}
    for name, waveform in TRACKS.items():
        out, keras_out = runner.track(waveform), expected[name]
        assert int(out["num_chunks"]) == keras_out["num_chunks"] == PATCHES[name], name
        errors[name] = max(float(np.max(np.abs(out["probabilities"] - keras_out["probabilities"]))),
                           float(np.max(np.abs(out["embedding"] - keras_out["penultimate"].mean(axis=0)))))
    return errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_track_signature_equals_keras_track(exports, expected, fmt):
    errors = _track_errors(load_exported(_path(exports, fmt)), expected)
    print(f"\n{fmt}: max abs error of the track outputs: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_clip_signature_equals_keras_on_patches(mtt, exports, fmt):
    patches = mtt.patches(TRACKS["music_10.5s"])
    keras_out = {k: np.asarray(v) for k, v in mtt(patches, training=False).items()}
    out = load_exported(_path(exports, fmt)).clips(patches)
    assert out["probabilities"].shape == (3, 50) and out["embedding"].shape == (3, 200)
    np.testing.assert_allclose(out["probabilities"], keras_out["probabilities"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out["embedding"], keras_out["penultimate"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_and_non_finite_tracks_are_errors_and_the_graph_reports_no_patch(exports, fmt):
    runner = load_exported(_path(exports, fmt))
    with pytest.raises(UnusableTrack, match="empty"):
        runner.track(np.zeros(0, np.float32))
    with pytest.raises(UnusableTrack, match="non_finite"):
        runner.track(np.full(SR, np.nan, np.float32))
    raw = runner.run("tag_track", waveform=np.zeros(0, np.float32))  # what the graph itself says
    assert int(raw["num_chunks"]) == 0 and np.all(np.isfinite(raw["probabilities"]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_says_how_a_track_is_tagged_and_there_is_no_head(mtt, exports, fmt):
    runner = load_exported(_path(exports, fmt))
    for meta in (runner.metadata, read_metadata(_path(exports, fmt))):
        assert meta["kind"] == "tagger" and meta["tags"] == mtt.tags and len(meta["tags"]) == 50
        assert (meta["track_rule"], meta["normalize"], meta["clip_samples"]) == ("patches", False, 48128)
        assert (meta["hop_samples"], meta["pad_mode"]) == (47872, "reflect")
    assert {"tag", "tag_track"} <= set(runner.signatures) and "head" not in runner.signatures


def test_tflite_uses_builtin_ops_and_keeps_the_float16_rounding(exports):
    from keras_music_ssl.export.private_api import litert_schema

    ops = tflite_operators(_path(exports, "tflite"))
    assert not set(ops) & set(FORBIDDEN_OPS) and {"RFFT2D", "MIRROR_PAD", "TILE", "GATHER", "CAST"} <= set(ops)
    schema = litert_schema()
    flat = schema.ModelT.InitFromPackedBuf(_path(exports, "tflite").read_bytes(), 0)
    types = {tensor.type for subgraph in flat.subgraphs for tensor in subgraph.tensors}
    assert schema.TensorType.FLOAT16 in types  # the mel's cast there and back is in the graph


def test_onnx_uses_standard_ops_and_keeps_the_float16_rounding(exports):
    import onnx

    from keras_music_ssl.export.onnx import check_standard_ops, float16_casts

    for file in ("clips.onnx", "track.onnx"):
        proto = onnx.load(str(_path(exports, "onnx") / file))
        check_standard_ops(proto)
        assert len(float16_casts(proto)) == 1, file


def test_the_card_carries_the_presets_licence_dataset_and_results(exports):
    data = json.loads((_path(exports, "savedmodel") / "model.json").read_text())
    assert data["type"] == "tagger" and len(data["classes"]) == 50 and data["license"] == "isc"
    assert data["dataset"]["name"] == "MagnaTagATune" and "pretraining" not in data
    assert round(data["metrics"]["model"]["roc_auc_macro"], 3) == 0.907
    assert data["inference"]["clip_samples"] == 48128 and data["inference"]["embedding_dim"] == 200
    assert "pons2019musicnn" in data["citation"] and data["paper"] == "https://arxiv.org/abs/1909.06654"
    assert set(data["schema"]["signatures"]) >= {"tag", "tag_track"}
    card = (_path(exports, "tflite").with_suffix(".md")).read_text()
    assert "ISC" in card and "| `tag_track` |" in card and "kmssl tag song.mp3 --model" in card


def test_quantised_tflite_is_refused_in_one_line_before_any_work(mtt, tmp_path):
    for fmt in ("tflite-fp16", "tflite-int8", "tflite-int8-full"):
        with pytest.raises(ExportError, match="not made or measured for musicnn's models") as error:
            export(mtt, tmp_path / f"{fmt}.tflite", fmt)
        assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_vgg_tflite_track_equals_keras(presets, tmp_path):
    from keras_music_ssl.presets import load_preset

    vgg = load_preset(presets["vgg_mtt"])
    export(vgg, tmp_path / "vgg.tflite", "tflite")
    runner = load_exported(tmp_path / "vgg.tflite")
    assert not set(tflite_operators(tmp_path / "vgg.tflite")) & set(FORBIDDEN_OPS)
    for name in ("music_10.5s", "short_0.5s"):
        out, keras_out = runner.track(TRACKS[name]), vgg.track(TRACKS[name])
        assert int(out["num_chunks"]) == keras_out["num_chunks"]
        np.testing.assert_allclose(out["probabilities"], keras_out["probabilities"], atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(out["embedding"], keras_out["penultimate"].mean(axis=0), atol=TOLERANCE, rtol=0)


def test_old_exports_read_with_default_track_fields_and_new_fields_are_checked():
    old = {"kind": "tagger", "tags": ["a"], "sample_rate": 16000, "clip_samples": 64000}
    meta = checked_metadata(json.dumps(old), "old")
    assert (meta["track_rule"], meta["normalize"]) == ("chunks", True)
    patches = {**old, "track_rule": "patches", "normalize": False, "hop_samples": 47872, "pad_mode": "reflect"}
    assert checked_metadata(json.dumps(patches), "new")["hop_samples"] == 47872
    for bad, field in (({"track_rule": "frames"}, "track_rule"), ({"normalize": "no"}, "normalize"),
                       ({"hop_samples": 0}, "hop_samples"), ({"pad_mode": "edge"}, "pad_mode"),
                       ({"kind": "embedder", "tags": []}, "not a tagger")):
        with pytest.raises(ExportError, match=field):
            checked_metadata(json.dumps({**patches, **bad}), "tampered")


# --- kmssl export / kmssl tag ------------------------------------------------------------------

def test_kmssl_tag_with_the_export_gives_the_presets_tags(presets, tmp_path, capsys):
    import soundfile as sf

    song = tmp_path / "song.wav"
    sf.write(song, music(7.0, 8, peak=0.5), SR, subtype="FLOAT")  # peak 0.5: normalising would change the scores
    out = tmp_path / "musicnn_mtt.tflite"
    assert main(["export", "--preset", str(presets["musicnn_mtt"]), "--format", "tflite", "--out", str(out)]) == 0
    capsys.readouterr()
    reports = []
    for source in (["--preset", str(presets["musicnn_mtt"])], ["--model", str(out)]):
        assert main(["tag", str(song), *source, "--json", "--top", "10"]) == 0
        reports.append(json.loads(capsys.readouterr().out)["results"][0])
    preset, exported = reports
    assert exported["num_chunks"] == preset["num_chunks"] == 2
    assert [t["tag"] for t in exported["tags"]] == [t["tag"] for t in preset["tags"]]
    np.testing.assert_allclose([t["score"] for t in exported["tags"]], [t["score"] for t in preset["tags"]],
                               atol=TOLERANCE, rtol=0)


def test_kmssl_export_of_a_keras_file_and_one_line_errors(mtt, presets, tmp_path, capsys):
    mtt.save(tmp_path / "musicnn.keras")
    out = tmp_path / "from_keras"
    assert main(["export", "--model", str(tmp_path / "musicnn.keras"), "--format", "savedmodel", "--out", str(out)]) == 0
    assert load_exported(out).metadata["track_rule"] == "patches"
    capsys.readouterr()
    (tmp_path / "probe.keras").write_bytes(b"")  # never read: refused first
    for argv, message in (
            (["--head", str(tmp_path / "probe.keras"), "--format", "tflite"], "already a tagger"),
            (["--format", "tflite-int8"], "not made or measured for musicnn's models")):
        assert main(["export", "--preset", str(presets["musicnn_mtt"]), *argv,
                     "--out", str(tmp_path / "refused.tflite")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "refused.tflite").exists()
