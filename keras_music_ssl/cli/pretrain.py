"""kmssl pretrain: one pretext method, one run folder (config, history, TensorBoard, checkpoints,
final model, encoder preset). Killed, the same command resumes from the last finished epoch.

    kmssl pretrain --out runs/byol --method byol --epochs 20 --steps-per-epoch 50
    kmssl pretrain --out runs/mine --data my_shards --valid-data my_valid_audio --encoder paper
    KERAS_BACKEND=jax kmssl pretrain --out runs/jax
    kmssl pretrain --out runs/gpus --distribute auto --batch-size 256      # all GPUs of this host
    KERAS_BACKEND=jax kmssl pretrain --out runs/pod --distribute data-parallel \
        --coordinator host0:1234 --num-processes 4 --process-id $RANK     # one process per host

With no --data: the embedded rendered dataset (built once into $KMSSL_DATA_DIR).
"""

import dataclasses
import json
import os
import sys

HELP = "Pretrain an encoder with a pretext method (contrastive, byol, clustering, barlow_twins, vicreg)."

# option -> (PretrainConfig field, help); types come from the dataclass defaults
OPTIONS = {
    "--method": ("method", "contrastive, byol, clustering, barlow_twins or vicreg (default contrastive)"),
    "--data": ("data", "prepared shards (kmssl prepare), an audio folder or a manifest; default: rendered dataset"),
    "--valid-data": ("valid_data", "validation audio or shards for the collapse monitor (default: the rendered "
                                   "valid split, or 1 file in 20 of --data held out)"),
    "--dataset-size": ("dataset_size", "rendered dataset size when no --data: tiny, small, medium, full (default small)"),
    "--encoder": ("encoder", "encoder size: tiny, small, medium or paper (default small)"),
    "--epochs": ("epochs", "epochs (default 8)"),
    "--steps-per-epoch": ("steps_per_epoch", "steps per epoch (default 25)"),
    "--batch-size": ("batch_size", "view sets per step (default 16)"),
    "--views": ("views", "views per track (default 2)"),
    "--min-gap": ("min_gap_seconds", "start-to-start gap between views, seconds (default 4, the paper)"),
    "--views-per-track": ("views_per_track", "view sets drawn per decoded track (default 1)"),
    "--audio-cache": ("audio_cache", "audio-folder --data: keep the decoded 16 kHz tracks in this folder, so only "
                                     "the first pass decodes (float32, ~230 MB per hour of audio; default: none)"),
    "--gain-db": ("gain_db", "random gain of each view in +-dB (default 0: no augmentation, as the paper)"),
    "--polarity": ("polarity", "probability of flipping each view's sign (default 0)"),
    "--noise-snr-db": ("noise_snr_db", "add white noise at this SNR (default none)"),
    "--learning-rate": ("learning_rate", "peak learning rate (default 5e-4)"),
    "--warmup-epochs": ("warmup_epochs", "linear warm-up epochs (default 1)"),
    "--weight-decay": ("weight_decay", "weight decay at the start of the cosine (default 0.04)"),
    "--weight-decay-end": ("weight_decay_end", "weight decay at the end (default 0.4)"),
    "--momentum-epochs": ("momentum_epochs", "EMA horizon of byol/clustering in epochs (default: the run; "
                                             "the released code used 999)"),
    "--seed": ("seed", "seed of weights, views and shuffling (default 0)"),
    "--checkpoint-every": ("checkpoint_every", "write checkpoints/epochNNN.keras every N epochs (default 1)"),
    "--probe-every": ("probe_every", "every N epochs, a fast linear probe of the encoder per task on "
                                     "--probe-dataset, logged to history.csv / TensorBoard and drawn in "
                                     "pretraining.png beside the floors (default: off)"),
    "--probe-dataset": ("probe_dataset", "labeled dataset of --probe-every (as kmssl probe takes; default: the "
                                         "rendered dataset when no --data)"),
}
TYPES = {"data": str, "valid_data": str, "audio_cache": str, "noise_snr_db": float, "momentum_epochs": int,
         "probe_every": int, "probe_dataset": str}  # default None


def add_pretrain_options(parser, exclude=()):
    """The PretrainConfig options (also used by ``kmssl compare``)."""
    from keras_music_ssl.train import PretrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}  # no instance: it imports Keras
    for flag, (field, text) in OPTIONS.items():
        if field not in exclude:
            kind = TYPES.get(field) or type(defaults[field])
            parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword of the method's constructor, VALUE as JSON (e.g. temperature=0.2, "
                             "form='\"original\"'); repeatable")
    parser.add_argument("--data-dir", default=None, help="rendered dataset cache (default $KMSSL_DATA_DIR)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_distribute_options(parser):
    parser.add_argument("--distribute", choices=("none", "auto", "mirrored", "data-parallel"), default="none",
                        help="several devices: mirrored (TensorFlow), data-parallel (JAX), auto (the backend's, "
                             "when there are several devices); --batch-size is the global batch (default none)")
    parser.add_argument("--devices", type=int, default=None, help="how many devices (default: all of the best kind)")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="JAX, several processes: the address of process 0")
    parser.add_argument("--num-processes", type=int, default=None, help="JAX, several processes: how many")
    parser.add_argument("--process-id", type=int, default=None, help="JAX, several processes: this one's index")


def distribute_from(args):
    """(distribute, devices) for ``pretrain``; joins the JAX processes when asked."""
    from keras_music_ssl.train import PretrainError

    joined = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in joined):
        if any(v is None for v in joined):
            raise PretrainError("--coordinator, --num-processes and --process-id go together")
        from keras_music_ssl.pretext import distribute

        try:
            distribute.initialize(*joined)
        except ValueError as error:
            raise PretrainError(str(error)) from None
    name = None if args.distribute == "none" else args.distribute.replace("-", "_")
    return name, args.devices


def add_arguments(parser):
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (resumes if it holds this run)")
    add_pretrain_options(parser)
    add_distribute_options(parser)
    parser.add_argument("--config", default=None, metavar="CONFIG_JSON",
                        help="start from a run's config.json (options given here override it)")


def settings_from(args):
    """The PretrainConfig fields given by ``args`` (and ``--config``)."""
    from keras_music_ssl.train import PretrainError

    from keras_music_ssl import storage

    settings = {}
    if getattr(args, "config", None):
        if not os.path.isfile(args.config):
            raise PretrainError(f"--config {args.config}: no such file")
        saved = storage.read_json(args.config, "--config")
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise PretrainError(f"--config {args.config}: not a run's config.json (no 'config' object)")
        settings = dict(saved["config"])
        unknown = sorted(set(settings) - {field for field, _ in OPTIONS.values()} - {"method_options"})
        if unknown:
            raise PretrainError(f"--config {args.config}: unknown settings {', '.join(unknown)}")
    for field, _ in OPTIONS.values():
        if getattr(args, field, None) is not None:
            settings[field] = getattr(args, field)
    options = dict(settings.get("method_options", {}))
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise PretrainError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value  # a bare string
    if options:
        settings["method_options"] = options
    return settings


def option_message(error):
    """A PretrainError's message with the setting it names as its command-line option."""
    message = str(error)
    field = message.split(" ", 1)[0]
    return FLAGS[field] + message[len(field):] if field in FLAGS else message


FLAGS = {field: flag for flag, (field, _) in OPTIONS.items()}


def run(args):
    from keras_music_ssl.train import PretrainConfig, PretrainError, pretrain

    try:
        config = PretrainConfig(**settings_from(args))
        distribute, devices = distribute_from(args)
        summary = pretrain(args.out, data_dir=args.data_dir, verbose=0 if args.quiet else 1,
                           distribute=distribute, devices=devices, **dataclasses.asdict(config))
    except PretrainError as error:
        print(f"kmssl pretrain: {option_message(error)}", file=sys.stderr)
        return 2
    final = ", ".join(f"{k} {v:.4g}" for k, v in summary["final"].items() if k != "epoch")
    print(f"finished {summary['method']} ({summary['steps']} steps): {final}")
    print(f"encoder preset -> {summary['preset']}")
    return 0
