"""SavedModel and TFLite exports of a tagger: parity, signatures, op lists, quantisation.

One tiny tagger (BatchNorm statistics set from audio, as in a trained model) is exported
once per format for the module; each test checks one property of the files. The
reference for a track is the authors' definition computed by hand here: peak-normalise,
zero-pad to a multiple of 4 s, embed each chunk with the Keras encoder, average, head.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import TINY_ENCODER

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.export import (FORMATS, ExportError, TFLiteRunner, export, load_exported,
                                    read_metadata, synthetic_clips, tflite_operators)
from keras_music_ssl.tagger import MusicTagger, TagHead

CLIP = 64000
SR = 16000
# What a probe can learn from the synthetic clips: their kind, and four audio features.
TAGS = ["tone", "chord", "noise", "chirp", "beat", "part_silent", "bright", "bassy", "dynamic", "noisy"]
TFLITE_FORMATS = [f for f in FORMATS if f.startswith("tflite")]


def varied_clips(count, seed):
    """Tones, chords, noise, chirps, beats and part-silent clips (the library's generator)."""
    return synthetic_clips(count, CLIP, SR, seed=seed)


def clip_labels(clips):
    """Multi-hot TAGS: the generator's kind (clip i has kind i % 6), then four features
    above their median: spectral centroid, low-band energy, loudness variation, zero crossings."""
    kind = np.eye(6)[np.arange(len(clips)) % 6]
    power = np.abs(np.fft.rfft(clips, axis=1)) ** 2
    total = power.sum(axis=1) + 1e-9
    centroid = (power * np.arange(power.shape[1])).sum(axis=1) / total
    bass = power[:, :power.shape[1] // 32].sum(axis=1) / total
    rms = np.sqrt((clips.reshape(len(clips), 16, -1) ** 2).mean(axis=-1) + 1e-12)
    dynamic = rms.std(axis=1) / (rms.mean(axis=1) + 1e-9)
    crossings = (np.diff(np.sign(clips), axis=1) != 0).mean(axis=1)
    features = np.stack([centroid, bass, dynamic, crossings], axis=1)
    return np.concatenate([kind, features > np.median(features, axis=0)], axis=1).astype("float32")


def hard_inputs():
    """Silence, a clipped full-scale square-ish wave, and an int16-scaled (unnormalised) one."""
    t = np.arange(CLIP) / SR
    clipped = np.clip(30.0 * np.sin(2 * np.pi * 220 * t), -1.0, 1.0)
    return np.stack([np.zeros(CLIP), clipped, 32767.0 * clipped]).astype(np.float32)


def make_tagger(seed=0, config=TINY_ENCODER):
    """A tagger like a trained one: BatchNorm statistics from audio (not the 0/1 init), and
    a probe head fitted on frozen embeddings of 240 clips to predict ``clip_labels``.

    A random head would rank tags by its own weights, nearly the same for every clip: the
    5th and 6th tags would be near-ties that any rounding flips, whatever the export.
    """
    keras.utils.set_random_seed(seed)
    encoder = MusicEncoder(**config)
    audio = varied_clips(24, seed=100 + seed)
    for step in range(12):  # momentum 0.9: 12 steps bring the statistics most of the way
        encoder(audio[(step % 3) * 8:(step % 3) * 8 + 8], training=True)
    train = varied_clips(240, seed=200 + seed)
    head = TagHead(TAGS, use_bias=True)
    probe = keras.Sequential([keras.Input((encoder.output_dim,)), head])
    probe.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    probe.fit(encoder.predict(train, verbose=0), clip_labels(train), epochs=60, batch_size=32, verbose=0)
    return MusicTagger(encoder, head)


def reference_track(tagger, waveform):
    """(embedding, probabilities, num_chunks) by the authors' definition, with numpy + Keras."""
    waveform = np.asarray(waveform, np.float32)
    peak = np.max(np.abs(waveform)) if waveform.size else 0.0
    waveform = waveform / peak if peak > 0 else waveform
    chunks = -(-waveform.size // CLIP)  # 0 for an empty track, which the graph runs as one silent chunk
    padded = np.zeros(max(1, chunks) * CLIP, np.float32)
    padded[:waveform.size] = waveform
    embedding = tagger.encoder.predict(padded.reshape(-1, CLIP), verbose=0).mean(axis=0)
    probabilities = keras.ops.convert_to_numpy(tagger.head(embedding[None], training=False))[0]
    return embedding, probabilities, chunks


def tracks():
    """Tracks of 3 s, 4 s, 9.5 s and 61 s made of varied audio at different levels."""
    rng = np.random.default_rng(7)
    audio = varied_clips(16, seed=3).reshape(-1)
    out = {}
    for seconds in (3.0, 4.0, 9.5, 61.0):
        n = int(seconds * SR)
        start = rng.integers(0, audio.size - n + 1)
        out[f"{seconds:g}s"] = (audio[start:start + n] * rng.uniform(0.2, 0.9)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def tagger():
    return make_tagger()


@pytest.fixture(scope="module")
def exports(tagger, tmp_path_factory):
    """format -> path of the exported tagger (the embedder is exported in test_export_cli)."""
    root = tmp_path_factory.mktemp("exports")
    paths = {"savedmodel": export(tagger, root / "tagger", "savedmodel")}
    for fmt in TFLITE_FORMATS:
        paths[fmt] = export(tagger, root / f"tagger-{fmt}.tflite", fmt)
    return paths


FRESH_PROCESS = textwrap.dedent("""
    import sys
    # The package may be installed here (CI installs it editable): hide it, so that loading
    # the SavedModel cannot use any of its code. None in sys.modules makes every import fail.
    sys.modules["keras_music_ssl"] = None
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(sys.argv[1])
    inputs = np.load(sys.argv[2])
    out = {}
    clips = model.signatures["tag"](waveform=tf.constant(inputs["clips"]))
    out["clips_probabilities"] = clips["probabilities"].numpy()
    out["clips_embedding"] = clips["embedding"].numpy()
    for name in inputs.files:
        if name.startswith("track_"):
            result = model.signatures["tag_track"](waveform=tf.constant(inputs[name]))
            for key, value in result.items():
                out[f"{name}/{key}"] = value.numpy()
    meta = model.signatures["metadata"]()
    out["tags"] = meta["tags"].numpy().astype(str)
    out["kind"] = meta["kind"].numpy().decode()
    np.savez(sys.argv[3], **out)
""")


@pytest.fixture(scope="module")
def fresh_outputs(exports, tmp_path_factory):
    """Outputs of the tagger SavedModel run by plain TensorFlow in a new process."""
    work = tmp_path_factory.mktemp("fresh")
    inputs = {"clips": varied_clips(8, seed=21)}
    inputs.update({f"track_{name}": x for name, x in tracks().items()})
    inputs["track_empty"] = np.zeros(0, np.float32)
    np.savez(work / "inputs.npz", **inputs)
    (work / "run.py").write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "run.py", str(exports["savedmodel"]), "inputs.npz", "out.npz"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return inputs, dict(np.load(work / "out.npz"))


pytestmark = pytest.mark.tf_only


def test_savedmodel_in_fresh_process_matches_keras_on_clips(tagger, fresh_outputs):
    inputs, out = fresh_outputs
    np.testing.assert_allclose(out["clips_embedding"], tagger.encoder.predict(inputs["clips"], verbose=0),
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["clips_probabilities"], tagger.predict(inputs["clips"], verbose=0),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,chunks", [("3s", 1), ("4s", 1), ("9.5s", 3), ("61s", 16), ("empty", 0)])
def test_savedmodel_track_follows_the_chunk_and_mean_definition(tagger, fresh_outputs, name, chunks):
    inputs, out = fresh_outputs
    embedding, probabilities, expected_chunks = reference_track(tagger, inputs[f"track_{name}"])
    assert expected_chunks == chunks and int(out[f"track_{name}/num_chunks"]) == chunks
    np.testing.assert_allclose(out[f"track_{name}/embedding"], embedding, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out[f"track_{name}/probabilities"], probabilities, atol=1e-4, rtol=0)


def test_savedmodel_track_equals_library_track_embedding(tagger, fresh_outputs):
    from keras_music_ssl.embed import embed_waveform

    inputs, out = fresh_outputs
    for name in ("3s", "9.5s", "61s"):
        np.testing.assert_allclose(out[f"track_{name}/embedding"],
                                   embed_waveform(tagger.encoder, inputs[f"track_{name}"]), atol=1e-4, rtol=0)


def test_savedmodel_carries_tag_names(exports, fresh_outputs):
    _, out = fresh_outputs
    assert list(out["tags"]) == TAGS and str(out["kind"]) == "tagger"  # the metadata signature
    extra = exports["savedmodel"] / "assets.extra"
    assert (extra / "tags.txt").read_text().splitlines() == TAGS
    assert read_metadata(exports["savedmodel"])["tags"] == TAGS


def test_track_signature_peak_normalises_and_clip_signature_does_not(exports):
    runner = load_exported(exports["savedmodel"])
    x = tracks()["9.5s"]
    np.testing.assert_allclose(runner.track(7.0 * x)["probabilities"], runner.track(x)["probabilities"],
                               atol=1e-5, rtol=0)
    clip = varied_clips(2, seed=5)[1:] * 0.5
    assert np.abs(runner.clips(clip)["embedding"] - runner.clips(2 * clip)["embedding"]).max() > 1e-3


def test_saved_model_cli_shows_the_signatures(exports):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    done = subprocess.run([cli, "show", "--dir", str(exports["savedmodel"]), "--all"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for expected in ("signature_def['tag']", "signature_def['tag_track']", "signature_def['head']",
                     "signature_def['metadata']", "signature_def['serving_default']",
                     "shape: (-1, 64000)", "shape: (-1)", "outputs['probabilities']"):
        assert expected in done.stdout, expected


@pytest.mark.parametrize("fmt", TFLITE_FORMATS)
def test_tflite_uses_builtin_ops_only_with_the_frontend_in_the_graph(exports, fmt):
    ops = tflite_operators(exports[fmt])
    assert not {"CUSTOM", "DELEGATE", "VAR_HANDLE", "READ_VARIABLE"} & set(ops)
    assert not [op for op in ops if op.startswith("Flex")]
    assert {"RFFT2D", "LOG", "CONV_2D"} <= set(ops)  # waveform in: STFT and log-mel inside


@pytest.mark.parametrize("fmt", TFLITE_FORMATS)
def test_tflite_carries_tags_and_signatures(exports, fmt):
    meta = read_metadata(exports[fmt])
    assert meta["tags"] == TAGS and meta["kind"] == "tagger" and meta["clip_samples"] == CLIP
    runner = TFLiteRunner(exports[fmt])
    assert set(runner.signatures) == {"tag", "tag_track", "head"}


def test_tflite_float32_matches_keras(tagger, exports):
    clips = varied_clips(12, seed=31)
    out = TFLiteRunner(exports["tflite"]).clips(clips)
    np.testing.assert_allclose(out["embedding"], tagger.encoder.predict(clips, verbose=0), atol=1e-3, rtol=0)
    np.testing.assert_allclose(out["probabilities"], tagger.predict(clips, verbose=0), atol=1e-3, rtol=0)


def test_tflite_float32_track_matches_the_definition(tagger, exports):
    runner = TFLiteRunner(exports["tflite"])
    for name, x in tracks().items():
        embedding, probabilities, chunks = reference_track(tagger, x)
        out = runner.track(x)
        assert int(out["num_chunks"]) == chunks
        np.testing.assert_allclose(out["embedding"], embedding, atol=1e-3, rtol=0, err_msg=name)
        np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-3, rtol=0, err_msg=name)


def test_fixed_length_route_for_long_tracks_on_device_equals_tag_track(exports):
    """Tag each 4 s chunk, average the embeddings, run the head: the documented route."""
    runner = TFLiteRunner(exports["tflite"])
    x = tracks()["9.5s"]
    x = x / np.abs(x).max()
    chunks = np.zeros((3, CLIP), np.float32)
    chunks.reshape(-1)[:x.size] = x
    embeddings = np.stack([runner.run("tag", waveform=c[None])["embedding"][0] for c in chunks])
    by_chunks = runner.run("head", embedding=embeddings.mean(axis=0, keepdims=True))["probabilities"][0]
    np.testing.assert_allclose(by_chunks, runner.track(x)["probabilities"], atol=1e-5, rtol=0)


def test_tflite_float16_is_finite_and_close_to_keras(tagger, exports):
    clips = varied_clips(12, seed=31)
    out = TFLiteRunner(exports["tflite-fp16"]).clips(clips)
    assert np.all(np.isfinite(out["embedding"]))
    np.testing.assert_allclose(out["embedding"], tagger.encoder.predict(clips, verbose=0), atol=1e-2, rtol=0)


def top5_agreement(expected, got):
    return np.mean([set(np.argsort(-e)[:5]) == set(np.argsort(-g)[:5]) for e, g in zip(expected, got)])


def test_tflite_dynamic_int8_agrees_on_top5_tags(tagger, exports):
    clips = varied_clips(60, seed=41)  # 10 each of tones, chords, noise, chirps, beats, part-silent
    got = TFLiteRunner(exports["tflite-int8"]).clips(clips)["probabilities"]
    assert top5_agreement(tagger.predict(clips, verbose=0), got) >= 0.9


def test_tflite_full_int8_runs_int8_kernels_and_stays_close(tagger, exports):
    from ai_edge_litert import schema_py_generated as schema

    content = exports["tflite-int8-full"].read_bytes()
    flat = schema.ModelT.InitFromPackedBuf(content, 0)
    graph = next(g for g in flat.subgraphs if g.name == b"tag")
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in flat.operatorCodes]
    input_types = {}
    for op in graph.operators:
        input_types.setdefault(codes[op.opcodeIndex], set()).add(graph.tensors[op.inputs[0]].type)
    assert input_types[schema.BuiltinOperator.CONV_2D] == {schema.TensorType.INT8}  # the ResNet
    assert input_types[schema.BuiltinOperator.RFFT2D] == {schema.TensorType.FLOAT32}  # the frontend
    clips = varied_clips(60, seed=41)
    got = TFLiteRunner(exports["tflite-int8-full"]).clips(clips)["probabilities"]
    assert top5_agreement(tagger.predict(clips, verbose=0), got) >= 0.8


@pytest.mark.parametrize("fmt", ["savedmodel", *TFLITE_FORMATS])
def test_silence_and_clipped_input_give_finite_outputs(exports, fmt):
    runner = load_exported(exports[fmt])
    hard = hard_inputs()
    for name, out in [("clips", runner.clips(hard)), ("silent track", runner.track(np.zeros(100000, np.float32))),
                      ("clipped track", runner.track(hard[2])),
                      ("empty track", runner.run("tag_track", waveform=np.zeros(0, np.float32)))]:
        for key, value in out.items():
            assert np.all(np.isfinite(value)), f"{fmt} {name} {key}"


def test_wrong_model_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No exported model"):
        load_exported(tmp_path / "missing.tflite")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ExportError, match="not a SavedModel"):
        load_exported(tmp_path / "folder")
    (tmp_path / "junk.tflite").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not exported by keras_music_ssl"):
        load_exported(tmp_path / "junk.tflite")


def test_export_refuses_other_models_and_existing_paths(tagger, tmp_path):
    with pytest.raises(TypeError, match="MusicEncoder or a MusicTagger"):
        export(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), tmp_path / "x", "savedmodel")
    (tmp_path / "taken.tflite").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        export(tagger, tmp_path / "taken.tflite", "tflite")
    assert (tmp_path / "taken.tflite").read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="format"):
        export(tagger, tmp_path / "y", "coreml")


# --------------------------------------------------------------------------- full size (slow)


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """The paper-size tagger (2.8 M-parameter encoder) in every format."""
    tagger = make_tagger(seed=1, config={})
    root = tmp_path_factory.mktemp("full")
    return tagger, {fmt: export(tagger, root / (f"{fmt}.tflite" if fmt.startswith("tflite") else fmt), fmt)
                    for fmt in FORMATS}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["savedmodel", "onnx"])
def test_full_size_savedmodel_and_onnx_match_keras_on_clips_and_tracks(full_size, fmt):
    tagger, paths = full_size
    runner = load_exported(paths[fmt])
    clips = np.concatenate([varied_clips(12, seed=51), hard_inputs()])
    np.testing.assert_allclose(runner.clips(clips)["probabilities"], tagger.predict(clips, verbose=0),
                               atol=1e-4, rtol=0)
    for name, x in tracks().items():
        embedding, probabilities, _ = reference_track(tagger, x)
        out = runner.track(x)
        np.testing.assert_allclose(out["embedding"], embedding, atol=1e-4, rtol=0, err_msg=name)
        np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,tolerance", [("tflite", 1e-3), ("tflite-fp16", 1e-2)])
def test_full_size_float_tflite_embeddings_are_close(full_size, fmt, tolerance):
    tagger, paths = full_size
    clips = np.concatenate([varied_clips(24, seed=52), hard_inputs()])
    got = TFLiteRunner(paths[fmt]).clips(clips)["embedding"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, tagger.encoder.predict(clips, verbose=0), atol=tolerance, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,agreement", [("tflite-int8", 0.9), ("tflite-int8-full", 0.8)])
def test_full_size_int8_taggers_agree_on_top5_tags(full_size, fmt, agreement):
    tagger, paths = full_size
    clips = varied_clips(120, seed=41)
    got = TFLiteRunner(paths[fmt]).clips(np.concatenate([clips, hard_inputs()]))["probabilities"]
    assert np.all(np.isfinite(got))
    assert top5_agreement(tagger.predict(clips, verbose=0), got[:len(clips)]) >= agreement
