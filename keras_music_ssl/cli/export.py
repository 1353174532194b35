"""``kmssl export``: an encoder (embedder) or a tagger as a SavedModel, a TFLite or an ONNX model.

    kmssl export --preset deezer_contrastive --format savedmodel --out embedder/
    kmssl export --preset my_preset/ --head probe.keras --format tflite-int8 --out tagger.tflite
    kmssl export --model tagger.keras --format tflite --out tagger.tflite
    kmssl export --preset my_preset/ --head probe.keras --format onnx --out tagger_onnx/
    kmssl export --preset musicnn_mtt --format tflite --out musicnn_mtt.tflite   # a tagger already

A musicnn preset (``musicnn_mtt``, ``musicnn_msd``, ``vgg_mtt``, ``vgg_msd``) or ``.keras`` file is a
tagger with its own track rule (``keras_music_ssl.export``): no ``--head``, and float formats only
(savedmodel, tflite, onnx).

Export runs on TensorFlow whatever KERAS_BACKEND is: under JAX or PyTorch the model is
exported in a TensorFlow subprocess (``keras_music_ssl.export.export``).
"""

import os
import sys

# keras_music_ssl.export.FORMATS (that package imports numpy and every export module; tests/test_cli_quiet.py
# holds the two equal)
FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "tflite-int8-full", "onnx")

HELP = "Export an encoder (embedder) or a tagger to a SavedModel, a TFLite or an ONNX model."


def add_arguments(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="encoder preset (deezer_contrastive, ...) or musicnn tagger preset "
                                         "(musicnn_mtt, ...): a folder or a name")
    source.add_argument("--model", help="a .keras file of a MusicEncoder, a MusicTagger or a musicnn Musicnn / Vgg "
                                        "(any backend)")
    parser.add_argument("--head", help="probe head (.keras written by save_tag_head): export a tagger")
    parser.add_argument("--weights-dir", help="where named presets live (default: $KMSSL_WEIGHTS_DIR)")
    parser.add_argument("--format", choices=FORMATS, default="savedmodel",
                        help="tflite-int8 is dynamic-range int8; tflite-int8-full also quantises "
                             "activations after the frontend (calibrated on --calibration)")
    parser.add_argument("--calibration", nargs="+", metavar="AUDIO",
                        help="audio files for tflite-int8-full calibration (default: synthetic "
                             "tones, chords, noise, chirps and beats)")
    parser.add_argument("--out", required=True,
                        help="SavedModel folder, .tflite file, or ONNX folder (clips.onnx, track.onnx, tags) to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out, if it is an earlier export (anything else is left alone)")


def _fail(message):
    print(f"kmssl export: error: {str(message).splitlines()[0]}", file=sys.stderr)
    return 2


def _load_model(args):
    import keras

    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.musicnn import PatchTagger
    from keras_music_ssl.presets import load_preset
    from keras_music_ssl.tagger import MusicTagger, load_tag_head

    if args.preset:
        model = load_preset(args.preset, args.weights_dir)
        source = args.preset
    else:
        model = keras.saving.load_model(args.model)
        source = args.model
    if not isinstance(model, (MusicEncoder, MusicTagger, PatchTagger)):
        raise ValueError(f"{source} holds a {type(model).__name__}, not a MusicEncoder, a MusicTagger or a "
                         "musicnn tagger (Musicnn, Vgg).")
    if args.head:
        if not isinstance(model, MusicEncoder):
            raise ValueError(f"{source} is already a tagger ({type(model).__name__}); --head goes with an encoder.")
        head = load_tag_head(args.head)
        if head.input_dim != model.output_dim:
            raise ValueError(f"The head expects {head.input_dim}-d embeddings; the encoder gives "
                             f"{model.output_dim}-d.")
        model = MusicTagger(model, head)
    return model


def _calibration_clips(paths, clip_samples, sample_rate):
    import numpy as np

    from keras_music_ssl.data import AudioError, load_audio
    from keras_music_ssl.embed import chunk_waveform

    clips = []
    for path in paths:
        try:
            clips.append(chunk_waveform(load_audio(path, sample_rate=sample_rate), clip_samples))
        except AudioError as error:
            print(f"kmssl export: skipping calibration file {error}", file=sys.stderr)
    if not clips:
        raise ValueError("none of the --calibration files could be read")
    return np.concatenate(clips)


def run(args):
    from keras_music_ssl import storage
    from keras_music_ssl.export import QUANTIZATIONS, ExportError, export, is_export, model_metadata, require_quantizable
    from keras_music_ssl.presets import PresetNotFoundError, preset_metadata

    storage.check_output(args.out, "file" if args.format.startswith("tflite") else "folder")
    if os.path.lexists(args.out) and not args.overwrite:
        return _fail(f"{args.out} exists (use --overwrite to replace it)")
    if os.path.lexists(args.out) and not is_export(args.out):  # before loading anything
        return _fail(f"{args.out} is not an export of keras_music_ssl: --overwrite replaces only an earlier "
                     "export (remove it yourself, or choose another --out)")
    if args.calibration and args.format != "tflite-int8-full":
        return _fail("--calibration only applies to --format tflite-int8-full")
    for flag, path in (("--model", args.model), ("--head", args.head)):
        if path and not os.path.isfile(path):
            return _fail(f"{flag} {path}: no such file")
    try:
        model = _load_model(args)
        if args.format in QUANTIZATIONS:  # before reading any calibration audio
            require_quantizable(model_metadata(model), QUANTIZATIONS[args.format])
        representative = None
        if args.calibration:
            representative = _calibration_clips(args.calibration, model.num_samples, model.sample_rate)
        # the preset's training and licence go into the export's model card
        metadata = preset_metadata(args.preset, args.weights_dir) if args.preset else None
        out = export(model, args.out, args.format, representative=representative,
                     overwrite=args.overwrite, metadata=metadata)
    except (PresetNotFoundError, ValueError, TypeError, ExportError) as error:
        return _fail(error)
    print(f"Exported the {model_metadata(model)['kind']} to {out} ({args.format}).")
    return 0
