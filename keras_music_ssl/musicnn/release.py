"""musicnn's released models, converted on first use from the ``musicnn`` wheel on PyPI.

``Musicnn.from_preset("musicnn_mtt")`` (any name of ``presets.MUSICNN_PRESETS``; ``kmssl tag
--preset``) finds ``<weights dir>/musicnn_mtt/``, or calls :func:`fetch_presets`, which

1. finds the wheel ``musicnn-0.1.0-py3-none-any.whl``: the path given (``source``, else the
   environment variable ``KMSSL_MUSICNN_WHEEL``: the file or a folder that holds it), else one in
   the weights folder (a previous download, or put there by hand on a machine without internet),
   else downloads it with ``python -m pip download musicnn==0.1.0 --no-deps`` (pip's own index,
   proxy and cache settings apply; the package is not installed: it pins numpy < 1.17);
2. checks it (its SHA-256 is the one PyPI publishes for this file; a zip whose members' CRCs
   match) and converts the four models with the strict converter (``convert.py``) into a hidden
   staging folder, each with its tag list (read from the wheel's ``configuration.py``), the test
   results its authors recorded (``experiment.result``) and a model card;
3. moves the four presets into place only when all converted, and removes a wheel it downloaded.

Later calls never touch the network. Processes that ask at once wait for the first one's work.
"""

import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

from keras_music_ssl import storage
from keras_music_ssl.download import sha256_of
from keras_music_ssl.errors import KmsslError
from keras_music_ssl.presets import MUSICNN_PRESETS, checked_zip, make_named_presets, weights_dir

WHEEL_ENV = "KMSSL_MUSICNN_WHEEL"
REQUIREMENT = "musicnn==0.1.0"
WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"  # PyPI's, for this file
CHECKPOINT_FILES = (".index", ".data-00000-of-00001")
LICENCE_MEMBER = "musicnn-0.1.0.dist-info/LICENSE.md"
PROJECT_URL = "https://github.com/jordipons/musicnn"
PAPER_URL = "https://arxiv.org/abs/1909.06654"
CITATION = """@inproceedings{pons2019musicnn,
  title={musicnn: Pre-trained convolutional neural networks for music audio tagging},
  author={Pons, Jordi and Serra, Xavier},
  booktitle={Late-breaking/demo session in 20th International Society for Music Information Retrieval Conference (LBD-ISMIR2019)},
  year={2019}
}"""
DATASETS = {
    "MTT": {"name": "MagnaTagATune",
            "description": "about 21,000 clips of 29 s from Magnatune's catalogue with tags from the TagATune game "
                           "(Law et al., 2009); the 50 most frequent tags, the usual split",
            "licence": "MagnaTagATune is distributed under CC BY-NC-SA 3.0 (Magnatune's audio, TagATune's "
                       "annotations): non-commercial use, share alike."},
    "MSD": {"name": "Million Song Dataset",
            "description": "the Million Song Dataset's 30 s previews (Bertin-Mahieux et al., 2011) with the 50 most "
                           "frequent Last.fm tags (the Last.fm dataset), the usual split",
            "licence": "the Million Song Dataset and its Last.fm tags are provided for non-commercial research; "
                       "the audio previews (7digital) are not redistributable: see the datasets' own terms."},
}
ARCHITECTURES = {
    "Musicnn": ("musicnn", "musicnn (Pons & Serra, 2019): a musically motivated front end (timbral 7x38 and 7x67 "
                           "filters, temporal 128x1, 64x1 and 32x1 filters, max-pooled over frequency), a mid end of "
                           "three residual 1-D convolutions with dense connections, and a back end of temporal max "
                           "and mean pooling, a 200-unit dense layer (`penultimate`) and a sigmoid per tag"),
    "Vgg": ("VGG", "the VGG-like baseline of musicnn (Pons & Serra, 2019): five blocks of 3x3 convolution (128 "
                   "filters), batch norm and max pooling, then a sigmoid per tag on the flattened 256 features "
                   "(`penultimate`, the original's `pool5`)"),
}


class ReleaseError(KmsslError):
    """The musicnn wheel could not be found, downloaded or converted (one line: what to do)."""


def fetch_presets(root=None, source=None, overwrite=False):
    """Make the four musicnn presets in ``root`` (the weights folder) and return ``{name: folder}``.

    ``source``: the wheel (or a folder holding it) to convert; default: ``$KMSSL_MUSICNN_WHEEL``,
    else a wheel in ``root``, else ``pip download``. ``overwrite``: convert again even if the
    presets exist. Raises :class:`ReleaseError` in one line.
    """
    root = weights_dir(root)

    def convert(wheel, downloaded, staging):
        _convert_all(wheel, staging, f"pip download {REQUIREMENT}" if downloaded else str(wheel))

    return make_named_presets("musicnn", MUSICNN_PRESETS, root, lambda: _find_wheel(root, source), convert,
                              overwrite)


def _find_wheel(root, source):
    """``(wheel path, downloaded here)``."""
    given = source or os.environ.get(WHEEL_ENV)
    if given:
        path = pathlib.Path(given).expanduser()
        if path.is_dir():
            path = path / WHEEL_NAME
        if not path.is_file():
            raise ReleaseError(f"{path} is not the musicnn wheel ({WHEEL_NAME}); "
                               f"{'set ' + WHEEL_ENV + ' to' if not source else 'give'} the file or its folder")
        return path, False
    if (root / WHEEL_NAME).is_file():
        return root / WHEEL_NAME, False
    return _download(root), True


def _download(root):
    target = storage.partial_path(root / "musicnn-wheel")
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "download", REQUIREMENT, "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", str(target)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        failed = result.returncode != 0 or not (target / WHEEL_NAME).is_file()
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1] if failed else ""
    except (OSError, subprocess.TimeoutExpired) as error:
        failed, reason = True, f"{type(error).__name__}: {error}"
    if failed:
        shutil.rmtree(target, ignore_errors=True)
        raise ReleaseError(f"pip could not download {REQUIREMENT} ({reason}). Download {WHEEL_NAME} by hand "
                           f"(pip download {REQUIREMENT} --no-deps) and put it at {root / WHEEL_NAME}, or set "
                           f"{WHEEL_ENV} to its path")
    os.replace(target / WHEEL_NAME, root / WHEEL_NAME)
    shutil.rmtree(target, ignore_errors=True)
    return root / WHEEL_NAME


def _check(wheel):
    """``{member: name}`` of the wheel's zip, after checking its SHA-256 and CRCs; ReleaseError otherwise."""
    digest = sha256_of(wheel)
    if digest != WHEEL_SHA256:
        raise ReleaseError(f"{wheel} is not the musicnn 0.1.0 wheel of PyPI (its SHA-256 is {digest[:12]}..., "
                           f"expected {WHEEL_SHA256[:12]}...)")
    try:
        return set(checked_zip(wheel))
    except ValueError as error:
        raise ReleaseError(str(error)) from None


def tag_lists(source):
    """``{"MTT": [...], "MSD": [...]}`` from the text of musicnn's ``configuration.py`` (read, not run)."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            match = re.fullmatch(r"(MTT|MSD)_LABELS", node.targets[0].id)
            if match:
                found[match.group(1)] = [str(tag) for tag in ast.literal_eval(node.value)]
    return found


def reported_results(text):
    """``(ROC-AUC, PR-AUC)`` from an ``experiment.result`` (two ``AUC:`` lines, in that order)."""
    values = [float(v) for v in re.findall(r"AUC:\s*([0-9.]+)", text)]
    return tuple(values[:2]) if len(values) >= 2 else None


def _convert_all(wheel, staging, origin):
    """Convert the wheel's four checkpoints into ``staging/<preset name>/``."""
    from keras_music_ssl.musicnn.convert import CheckpointError, load_checkpoint_weights, read_checkpoint
    from keras_music_ssl.musicnn.models import Musicnn, Vgg

    names = _check(wheel)
    classes = {"Musicnn": Musicnn, "Vgg": Vgg}
    with zipfile.ZipFile(wheel) as archive:
        tags = tag_lists(archive.read("musicnn/configuration.py").decode("utf-8"))
        # ISC: the copyright and permission notice must appear in all copies, so each preset carries it.
        notice = archive.read(LICENCE_MEMBER).decode("utf-8").strip() if LICENCE_MEMBER in names else None
        for name, (class_name, folder) in MUSICNN_PRESETS.items():
            members = [f"musicnn/{folder}/{file}" for file in CHECKPOINT_FILES]
            missing = [m for m in members if m not in names]
            if missing:
                raise ReleaseError(f"{wheel} lacks {', '.join(missing)}: not musicnn's release")
            for member in members + [f"musicnn/{folder}/{extra}" for extra in ("experiment.result", "config.json")]:
                if member in names:
                    archive.extract(member, staging / "wheel")
            dataset = folder.split("_")[0]  # MTT or MSD
            model = classes[class_name](tags[dataset], name=name)
            checkpoint = staging / "wheel" / "musicnn" / folder
            try:
                load_checkpoint_weights(model, read_checkpoint(f"{checkpoint}/"), f"musicnn/{folder}/")
            except CheckpointError as error:
                raise ReleaseError(f"{wheel}: {error}; nothing was kept") from None
            result, config = checkpoint / "experiment.result", checkpoint / "config.json"
            scores = reported_results(result.read_text()) if result.is_file() else None
            training = storage.read_json(config, "musicnn's training config") if config.is_file() else {}
            model.save_to_preset(staging / name, **_metadata(class_name, folder, dataset, scores, training, origin,
                                                                 notice))


def _metadata(class_name, folder, dataset, scores, training, origin, notice=None):
    """What a converted preset's ``metadata.json`` says (its card reads it: ``card.py``); ``training``:
    the checkpoint's ``config.json``; ``origin``: where the wheel came from; ``notice``: the wheel's
    licence text."""
    short, architecture = ARCHITECTURES[class_name]
    data = DATASETS[dataset]
    settings = ", ".join(text.format(training[key]) for key, text in (
        ("learning_rate", "learning rate {}"), ("batch_size", "batch {}"), ("weight_decay", "weight decay {}"),
        ("epochs", "at most {} epochs"), ("n_frames", "{}-frame patches"), ("pad_short", "short clips: {}"))
        if isinstance(training, dict) and key in training)
    trained = (f"Trained by musicnn's authors on {data['name']} with {training.get('optimizer', 'Adam')}"
               + (f" ({settings}; the checkpoint's `config.json`)" if settings else "") + ".")
    if scores:
        trained += (f" Its authors report a test ROC-AUC of {scores[0]:.3f} and PR-AUC of {scores[1]:.3f} "
                    f"(`experiment.result`).")
    trained += (f" Converted unchanged by keras-music-ssl from the checkpoint `musicnn/{folder}/` of the "
                f"`{WHEEL_NAME}` wheel (PyPI; sha256 `{WHEEL_SHA256}`); the Keras model gives the original's "
                "taggram and `penultimate` features within 1e-3 (`tests/test_musicnn.py`).")
    return {
        "source": {"release": f"musicnn 0.1.0 ({PROJECT_URL}), the PyPI wheel", "checkpoint": f"musicnn/{folder}/",
                   "wheel": WHEEL_NAME, "sha256": WHEEL_SHA256, "url": origin},
        "dataset": data, "training_procedure": trained,
        **({"reported_results": {"dataset": f"{data['name']} test set", "roc_auc_macro": scores[0],
                                 "pr_auc_macro": scores[1]}} if scores else {}),
        "license": "isc",
        "licence": "musicnn's code and weights are released under the ISC licence (Copyright (c) Music Technology "
                   "Group, Universitat Pompeu Fabra 2019; the wheel's LICENSE.md, reproduced below).",
        **({"licence_notice": notice} if notice else {}),
        "citation": CITATION, "paper": PAPER_URL,
        "card": {
            "title": f"{short} music tagger, {data['name']} (musicnn's release, in Keras)",
            "summary": (f"A music tagger: 3 s of 16 kHz mono audio in, an independent probability for each of 50 "
                        f"{data['name']} tags out, and {short}'s `penultimate` features. These are the weights "
                        f"that musicnn's authors released ({PROJECT_URL}), converted unchanged to Keras 3 with "
                        "keras-music-ssl, a Keras 3 library that runs on TensorFlow, JAX and PyTorch."),
            "architecture": architecture,
            "frontend": "log-compressed mel spectrogram as musicnn computes it with librosa: n_fft 512, hop 256, "
                        "96 Slaney mel bands (0-8 kHz, area-normalised), power 2, the mel rounded to float16, "
                        "then log10(1 + 10000 x) (in float32, where the original overflows on loud audio)",
            "input": "`waveform`, float32 `(batch, 48128)`: one 3 s patch (187 frames: 48,128 samples) of 16,000 Hz "
                     "mono audio as decoded (not normalised). A track is padded by 256 samples at both ends "
                     "(reflected, as librosa < 0.10 centres its frames) and cut into patches every 47,872 "
                     "samples (187 frames), as musicnn's extractor cuts its spectrogram; `model.track(waveform)` "
                     "does it.",
            "output": "`probabilities`, float32 `(batch, 50)`, one sigmoid per tag (the taggram's rows), and "
                      "`penultimate`, the features before the output layer. A track's tags are the mean of its "
                      "patches' probabilities, as musicnn's `top_tags`.",
            "usage": ["```python", f"from keras_music_ssl.musicnn import {class_name}", "",
                      f"model = {class_name}.from_preset(\"path/to/this/folder\")  # or \"{_preset_of(folder)}\"",
                      "out = model.track(waveform)  # a whole 16 kHz mono track -> probabilities, taggram, "
                      "penultimate", "```", "", "```bash",
                      f"kmssl tag song.mp3 --preset {_preset_of(folder)} --top 5", "```"],
            "hub_tags": ["musicnn", "magnatagatune" if dataset == "MTT" else "million-song-dataset"],
        },
    }


def _preset_of(folder):
    return next(name for name, (_, f) in MUSICNN_PRESETS.items() if f == folder)
