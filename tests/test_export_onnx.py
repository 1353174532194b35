"""ONNX export of a tagger: parity with the Keras model in onnxruntime (Python) and in
onnxruntime-node, the track rule, standard ops only, tag names inside.

The tagger is a tiny encoder with BatchNorm statistics from audio (not the 0/1 init) and a
head with a hidden BatchNorm block. The export runs on the current backend: in-process on TensorFlow,
through a ``.keras`` file and a TensorFlow subprocess on JAX and PyTorch, so the parity
test below holds for a model exported from each backend. Tolerance: 1e-4 everywhere.
"""

import json
import pathlib
import shutil
import subprocess

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import soundfile as sf
from conftest import TINY_ENCODER
from test_export import CLIP, SR, TAGS, reference_track, tracks, varied_clips

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.export import ExportError, export, load_exported, read_metadata
from keras_music_ssl.export.onnx import FILES, OPSET, signature_files
from keras_music_ssl.tagger import MusicTagger, TagHead

ROOT = pathlib.Path(__file__).resolve().parents[1]
NODE_SCRIPT = ROOT / "js" / "run_onnx.mjs"


@pytest.fixture(scope="module")
def tagger():
    keras.utils.set_random_seed(1)
    encoder = MusicEncoder(**TINY_ENCODER)
    head = TagHead(TAGS, hidden_units=(16,), use_bias=True)
    model = MusicTagger(encoder, head)
    audio = varied_clips(24, seed=101)
    for step in range(6):  # BatchNorm statistics of the encoder and the head move from 0/1
        model(audio[(step % 3) * 8:(step % 3) * 8 + 8], training=True)
    return model


@pytest.fixture(scope="module")
def onnx_dir(tagger, tmp_path_factory):
    return export(tagger, tmp_path_factory.mktemp("onnx") / "tagger_onnx", "onnx")


def test_export_from_this_backend_matches_keras_on_clips_and_tracks(tagger, onnx_dir):
    runner = load_exported(onnx_dir)
    clips = varied_clips(5, seed=31)
    out = runner.clips(clips)
    np.testing.assert_allclose(out["probabilities"], tagger.predict(clips, verbose=0), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["embedding"], tagger.encoder.predict(clips, verbose=0), atol=1e-4, rtol=0)
    single = runner.clips(clips[2:3])  # the batch is dynamic: one graph for 5 clips and for 1
    np.testing.assert_allclose(single["embedding"], out["embedding"][2:3], atol=1e-5, rtol=0)
    for name, waveform in tracks().items():
        embedding, probabilities, chunks = reference_track(tagger, waveform)
        got = runner.track(waveform)
        assert int(got["num_chunks"]) == chunks, name
        np.testing.assert_allclose(got["embedding"], embedding, atol=1e-4, rtol=0, err_msg=name)
        np.testing.assert_allclose(got["probabilities"], probabilities, atol=1e-4, rtol=0, err_msg=name)
    with pytest.raises(ValueError, match="empty"):
        runner.track(np.zeros(0, np.float32))
    raw = runner.run("tag_track", waveform=np.zeros(0, np.float32))  # the graph's form of the rule
    assert int(raw["num_chunks"]) == 0 and np.all(np.isfinite(raw["probabilities"]))


@pytest.mark.tf_only
def test_graphs_use_standard_onnx_ops_only_with_raw_audio_in(onnx_dir):
    ops = set()
    assert sorted(p.name for p in onnx_dir.glob("*.onnx")) == ["clips.onnx", "head.onnx", "track.onnx"]
    for call, file in FILES.items():
        model = onnx.load(str(onnx_dir / file))
        onnx.checker.check_model(model, full_check=True)
        assert [(entry.domain, entry.version) for entry in model.opset_import] == [("", OPSET)]
        assert {node.domain for node in model.graph.node} == {""}
        unknown = sorted({node.op_type for node in model.graph.node if not onnx.defs.has(node.op_type)})
        assert unknown == [], unknown
        ops |= {node.op_type for node in model.graph.node}
        (waveform,) = model.graph.input
        dims = [d.dim_value or d.dim_param for d in waveform.type.tensor_type.shape.dim]
        if call == "head":  # the tags of embeddings (batch, D): what a timeline's track tags need
            assert waveform.name == "embedding" and isinstance(dims[0], str) and dims[1] == 32
            continue
        assert waveform.name == "waveform" and waveform.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        if call == "clips":  # any batch of 4 s clips
            assert isinstance(dims[0], str) and dims[1] == CLIP
        else:  # one track of any length
            assert len(dims) == 1 and isinstance(dims[0], str)
    # The frontend is in the graph, its DFT as a strided convolution: no FFT op of any kind.
    assert {"Conv", "Pad", "Log", "MatMul"} <= ops and not ops & {"DFT", "STFT", "RFFT", "FFT"}


@pytest.mark.tf_only
def test_tag_names_travel_in_the_metadata_and_as_a_graph_output(tagger, onnx_dir):
    assert read_metadata(onnx_dir)["tags"] == tagger.tags
    assert (onnx_dir / "tags.txt").read_text().split() == tagger.tags
    assert signature_files(read_metadata(onnx_dir)) == {"tag": "clips.onnx", "tag_track": "track.onnx", "head": "head.onnx"}
    for signature, file in signature_files(read_metadata(onnx_dir)).items():
        session = onnxruntime.InferenceSession(str(onnx_dir / file), providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
        assert props["tags"].split("\n") == tagger.tags
        meta = json.loads(props["keras_music_ssl"])
        assert (meta["kind"], meta["signature"], meta["clip_samples"]) == ("tagger", signature, CLIP)
        inputs = {"head": {"embedding": np.zeros((1, 32), np.float32)}, "tag": {"waveform": np.zeros((1, CLIP), np.float32)},
                  "tag_track": {"waveform": np.zeros(CLIP, np.float32)}}[signature]
        (tags,) = session.run(["tags"], inputs)
        assert list(tags) == tagger.tags


def _node_outputs(onnx_dir, wav, *flags):
    done = subprocess.run(["node", str(NODE_SCRIPT), str(onnx_dir), str(wav), *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.tf_only
def test_nodejs_onnxruntime_gives_the_keras_numbers(tagger, onnx_dir, tmp_path):
    if shutil.which("node") is None or not (ROOT / "js" / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("needs Node.js and js/node_modules (python3 bootstrap.py install runs npm ci in js/)")
    clips = varied_clips(3, seed=41)
    waveform = np.concatenate([clips.reshape(-1), 0.5 * clips[0, :9000]])  # 3 clips + 9,000 samples
    waveform = (0.8 * waveform / np.abs(waveform).max()).astype(np.float32)
    sf.write(tmp_path / "clip.wav", waveform, SR, subtype="FLOAT")  # float WAV: exact samples

    track = _node_outputs(onnx_dir, tmp_path / "clip.wav")
    embedding, probabilities, chunks = reference_track(tagger, waveform)
    assert track["signature"] == "tag_track" and track["tags"] == tagger.tags
    assert track["num_chunks"] == chunks == 4
    np.testing.assert_allclose(track["embedding"], embedding, atol=1e-4, rtol=0)
    np.testing.assert_allclose(track["probabilities"], probabilities, atol=1e-4, rtol=0)

    batch = _node_outputs(onnx_dir, tmp_path / "clip.wav", "--clips")  # the 3 whole clips, one batch
    whole = waveform[:3 * CLIP].reshape(3, CLIP)
    np.testing.assert_allclose(batch["embedding"], tagger.encoder.predict(whole, verbose=0), atol=1e-4, rtol=0)
    np.testing.assert_allclose(batch["probabilities"], tagger.predict(whole, verbose=0), atol=1e-4, rtol=0)


@pytest.mark.tf_only
def test_without_the_onnx_extra_the_export_says_what_to_install(tagger, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx raises ImportError
    with pytest.raises(ExportError, match=r"keras-music-ssl\[onnx\]"):
        export(tagger, tmp_path / "nothing", "onnx")
    assert not (tmp_path / "nothing").exists()
