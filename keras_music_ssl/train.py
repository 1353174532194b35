"""Pretraining as a run: ``keras_music_ssl.pretrain(out, ...)``, the library side of ``kmssl pretrain``.

    from keras_music_ssl import pretrain
    summary = pretrain("runs/byol", method="byol", epochs=20, steps_per_epoch=50)

Any of the five methods, on the current Keras backend, on prepared shards, a folder or manifest
of audio, or (``data=None``) the embedded rendered dataset. The run folder ``out`` holds

    config.json     every setting of the run (``pretrain(out, **config)`` reruns it)
    history.csv     one row per finished epoch: loss, schedules, ``val_embedding_std``, ...
    logs/           TensorBoard
    checkpoints/    ``epochNNN.keras``, the whole pretext model (``keras.saving.load_model``)
    backup/         the last two epochs' training state while the run is unfinished (``backup.py``)
    model.keras     the final pretext model
    preset/         the encoder as a preset, for ``kmssl embed`` / ``probe`` / ``export``
    initial/        the encoder before its first step, as a preset: the floor of its own
                    configuration (``compare`` and the quickstart probe it beside the trained one)
    summary.json    written last: the run is finished

Several devices: ``distribute="auto" | "mirrored" | "data_parallel"`` (and ``devices``) train
the same objective on the global batch ``batch_size`` (see ``keras_music_ssl.pretext.distribute``);
it is not a setting of the run, so a run may resume on other devices. In a multi-process JAX
job (``distribute.initialize`` first) process 0 writes ``out`` and process i > 0 its own state
in ``out/process-i/``.

Calling ``pretrain`` again with the same ``out`` and settings resumes a killed run from its
last finished epoch (the data stream skips the batches already trained on, so the result equals
an uninterrupted run), or returns at once if the run finished. A kill at any instant, during a
checkpoint or backup write included, leaves a run that resumes (every file is written
atomically, ``storage.py``). Different settings in an existing run folder are an error, not a
silent mix; so is a second process on the same folder. Every setting is checked before anything
is written, and a loss that turns NaN stops the run with an error (no checkpoint or backup of
that epoch is kept).
"""

import dataclasses
import math
import os
import shutil
import time
import zlib

from keras_music_ssl import storage
from keras_music_ssl.errors import KmsslError
from keras_music_ssl.progress import keras_verbosity

SEGMENT_SECONDS = 4.0

# Named encoder sizes: the paper's ModifiedResNet and smaller ones for CPU budgets.
ENCODERS = {
    "tiny": dict(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=64),  # tests
    "small": dict(width=8, layers=(1, 1, 1, 1), heads=4, output_dim=256),
    "medium": dict(width=16, layers=(1, 1, 1, 1), heads=8, output_dim=512),
    "paper": dict(width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024),
}
# The keys of pretext.METHODS, which imports Keras: `kmssl compare --help` lists these (tests/test_cli_quiet.py)
METHOD_NAMES = ("contrastive", "byol", "clustering", "barlow_twins", "vicreg")
EMA_METHODS = ("byol", "clustering")
HELD_OUT_EVERY = 20  # user data without a validation set: 1 file in 20 monitors collapse


class PretrainError(KmsslError, ValueError):
    """Settings or data that cannot make a run (the CLI prints it in one line)."""


# field -> (kind, lowest, highest, lowest included); None bounds are open. Checked before any work.
RANGES = {
    "epochs": (int, 1, None, True), "steps_per_epoch": (int, 1, None, True), "batch_size": (int, 2, None, True),
    "views": (int, 2, None, True), "views_per_track": (int, 1, None, True), "checkpoint_every": (int, 1, None, True),
    "warmup_epochs": (int, 0, None, True), "seed": (int, 0, 2**32 - 1, True),
    "momentum_epochs": (int, 1, None, True), "probe_every": (int, 1, None, True),
    "min_gap_seconds": (float, 0.0, None, True), "gain_db": (float, 0.0, 60.0, True),
    "polarity": (float, 0.0, 1.0, True), "noise_snr_db": (float, -60.0, 200.0, True),
    "learning_rate": (float, 0.0, 10.0, False), "weight_decay": (float, 0.0, None, True),
    "weight_decay_end": (float, 0.0, None, True),
}


def checked(name, value, kind, low, high, closed, error=None):
    """``value`` as ``kind`` if it lies in range (``RANGES``' rule: lowest, highest, lowest included),
    else an ``error`` (default :class:`PretrainError`) naming the setting."""
    error = error or PretrainError
    if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise error(f"{name} must be a whole number, got {value!r}")
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a {kind.__name__}, got {value!r}") from None
    if kind is float and not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (value == low and not closed)):
        raise error(f"{name} must be {'>=' if closed else '>'} {low}, got {value}")
    if high is not None and value > high:
        raise error(f"{name} must be <= {high}, got {value}")
    return value


@dataclasses.dataclass
class PretrainConfig:
    """The settings of one run; ``config.json`` holds them (see ``pretrain``)."""

    method: str = "contrastive"
    data: str = None  # prepared shards, an audio folder or a manifest; None: the rendered dataset
    valid_data: str = None  # for the collapse monitor; None: the rendered valid split / held-out files
    dataset_size: str = "small"  # rendered dataset size when data is None
    encoder: str = "small"
    epochs: int = 8
    steps_per_epoch: int = 25
    batch_size: int = 16
    views: int = 2
    min_gap_seconds: float = 4.0  # start-to-start gap of the views (the paper: 4 s)
    views_per_track: int = 1
    audio_cache: str = None  # audio-folder data: keep the decoded tracks here (data/audio_cache.py)
    gain_db: float = 0.0  # light augmentation of each view (off in the paper)
    polarity: float = 0.0
    noise_snr_db: float = None
    learning_rate: float = 5e-4
    warmup_epochs: int = 1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_epochs: int = None  # EMA horizon (BYOL, clustering): None = the run; 999 = released code
    method_options: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    checkpoint_every: int = 1  # epochs
    probe_every: int = None  # epochs between learning-curve probes (probe/curve.py); None: off
    probe_dataset: str = None  # their labeled dataset; None: the rendered dataset (when data is None)

    def __post_init__(self):
        from keras_music_ssl.pretext import METHODS

        if self.method not in METHODS:
            raise PretrainError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        from keras_music_ssl.data.rendered import SIZES

        if self.data is None and self.dataset_size not in SIZES:
            raise PretrainError(f"dataset_size must be one of {', '.join(SIZES)}, got {self.dataset_size!r}")
        if self.encoder not in ENCODERS:
            raise PretrainError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        for name, rule in RANGES.items():
            if getattr(self, name) is not None:
                setattr(self, name, checked(name, getattr(self, name), *rule))
        for name in ("data", "valid_data", "audio_cache", "probe_dataset"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise PretrainError(f"{name} must be a path, got {getattr(self, name)!r}")
        if not isinstance(self.method_options, dict):
            raise PretrainError(f"method_options must be a mapping, got {self.method_options!r}")
        if self.probe_every is not None and self.probe_dataset is None and self.data is not None:
            raise PretrainError("probe_every with your own data: say which labeled dataset to probe (probe_dataset)")
        if self.momentum_epochs is not None and self.method not in EMA_METHODS:
            raise PretrainError(f"momentum_epochs applies to {' and '.join(EMA_METHODS)} only")

    def to_dict(self):
        return dataclasses.asdict(self)


def resolve_data(config, data_dir=None, progress=True):
    """-> (train source, validation source or None, a one-word description of the data)."""
    if config.data is None:
        from keras_music_ssl.data.embedded import embedded_dataset, split_shards

        dataset = embedded_dataset(config.dataset_size, config.seed, data_dir, progress)
        valid = config.valid_data or dataset.split("valid").paths
        return split_shards(dataset, "train", progress), valid, f"rendered-{config.dataset_size}"
    train = _source(config.data, "data")
    valid = _source(config.valid_data, "valid_data") if config.valid_data else None
    if valid is None and isinstance(train, list):  # hold out files of the audio folder or manifest
        held = [f for f in train if zlib.crc32(os.path.basename(f).encode()) % HELD_OUT_EVERY == 0]
        held = held or train[-1:]
        if len(held) < len(train):
            valid, train = held, [f for f in train if f not in set(held)]
    return train, valid, os.path.basename(os.path.normpath(config.data))


def _source(path, name):
    from keras_music_ssl.data.pipelines import is_prepared
    from keras_music_ssl.data.prepare import iter_sources

    if not os.path.exists(path):
        raise PretrainError(f"{name}: {path} not found")
    if is_prepared(path):
        return path
    files = [p for p, _ in iter_sources([path])]
    if not files:
        raise PretrainError(f"{name}: no shards and no audio files in {path}")
    return files


def build_model(config, steps_per_epoch=None):
    """The compiled pretext model of ``config`` (encoder of ``config.encoder`` size, seeded)."""
    import keras

    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.pretext import METHODS

    keras.utils.set_random_seed(config.seed)
    options = dict(config.method_options)
    if config.method in EMA_METHODS:
        options.setdefault("momentum_epochs", config.momentum_epochs)
    spe = steps_per_epoch or config.steps_per_epoch
    try:
        model = METHODS[config.method](MusicEncoder(**ENCODERS[config.encoder]), steps_per_epoch=spe, **options)
    except (TypeError, ValueError) as error:
        raise PretrainError(f"method_options {options}: {error}") from None
    model.compile(learning_rate=config.learning_rate, warmup_steps=config.warmup_epochs * spe,
                  weight_decay=config.weight_decay, weight_decay_end=config.weight_decay_end)
    return model


def sampler_of(config):
    from keras_music_ssl.data.views import ViewSampler
    from keras_music_ssl.data.audio import SAMPLE_RATE

    return ViewSampler(num_views=config.views, min_gap=int(config.min_gap_seconds * SAMPLE_RATE),
                       gain_db=config.gain_db, polarity=config.polarity, noise_snr_db=config.noise_snr_db)


def _monitor_views(source, config, clips=32):
    """A fixed batch of views (clips, V, samples) from the validation source, without augmentation."""
    import numpy as np

    from keras_music_ssl.data.pipelines import pretraining_dataset
    from keras_music_ssl.data.views import ViewSampler
    from keras_music_ssl.data.audio import SAMPLE_RATE

    sampler = ViewSampler(num_views=config.views, min_gap=int(config.min_gap_seconds * SAMPLE_RATE))
    batches = pretraining_dataset(source, batch_size=clips, sampler=sampler, seed=config.seed + 1, shuffle_buffer=0)
    return np.asarray(next(iter(batches)))


def epoch_seconds_callback():
    import keras

    class EpochSeconds(keras.callbacks.Callback):
        """Adds ``epoch_seconds`` (wall time of the epoch) to the logs, so history.csv keeps it."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = time.perf_counter() - self.started

    return EpochSeconds()


def keep_history(path, epochs):
    """Keep the rows of ``history.csv`` for epochs < ``epochs`` (an epoch that ran but was not
    backed up is trained again, and logged again) and drop a row a kill cut short; atomically."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        lines = f.readlines()

    def finished(line):
        epoch = line.split(",", 1)[0]
        return line.endswith("\n") and epoch.isdigit() and int(epoch) < epochs and line.count(",") == header

    header = lines[0].count(",") if lines else 0
    kept = lines[:1] + [line for line in lines[1:] if finished(line)]
    if kept != lines:
        storage.write_text(path, "".join(kept) if len(kept) > 1 else "")


SAME_RESULTS = {"audio_cache"}  # settings that do not change what is trained: a resume may change them


def check_run_folder(out, config, error=None, same_results=SAME_RESULTS):
    """Refuse (``error``, default :class:`PretrainError`) a run folder whose ``config.json`` holds
    other settings than ``config`` (a dataclass with ``to_dict``), bar those in ``same_results``."""
    import json

    error = error or PretrainError
    path = os.path.join(out, "config.json")
    if os.path.exists(path):
        saved = storage.read_json(path, "the run's settings")
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise error(f"{path} holds no run settings; use another output folder")
        saved = saved["config"]
        current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved
        changed = sorted(k for k in (set(saved) | set(current)) - set(same_results) if saved.get(k) != current.get(k))
        if changed:
            raise error(f"{out} holds a run with other settings ({', '.join(changed)} differ); "
                        "use another output folder, or the same settings to resume it")


def pretrain(out, data_dir=None, verbose=1, distribute=None, devices=None, **settings):
    """Pretrain an encoder with one pretext method; returns the run's summary (also ``summary.json``).

    ``settings`` are the fields of :class:`PretrainConfig` (method, data, encoder, epochs,
    steps_per_epoch, batch_size, views, learning_rate, ...); ``data_dir`` is where the rendered
    dataset is cached (default ``$KMSSL_DATA_DIR`` or ``~/.cache/keras_music_ssl/datasets``);
    ``distribute`` / ``devices``: see ``keras_music_ssl.pretext.distribute.Distribution``
    (None: one device).

    A run folder resumes: the same call again continues from the last finished epoch, and a
    finished run returns its summary at once (docs/pretraining.md).

    Args:
        out: the run folder (created; an existing one must hold the same settings).
        data_dir: where the rendered dataset is cached.
        verbose: Keras' ``fit`` verbosity (0, 1 or 2).
        distribute: "auto", "mirrored", "data_parallel" or None.
        devices: how many devices to use, or None for all.
        **settings: fields of ``PretrainConfig`` (``method``, ``data``, ``encoder``, ``epochs``,
            ``steps_per_epoch``, ``batch_size``, ...).

    Returns:
        The run's summary (a dict, also ``summary.json``): method, encoder, data, backend,
        epochs, steps, the final losses (``final``), the preset folder, ...

    Raises:
        PretrainError: a setting out of range, or another run's settings in ``out``.

    Examples:
        >>> from keras_music_ssl import pretrain
        >>> summary = pretrain("runs/tiny", method="byol", dataset_size="tiny", encoder="tiny",
        ...                    epochs=1, steps_per_epoch=2, batch_size=4, verbose=0)
        >>> summary["method"], summary["epochs"]
        ('byol', 1)
    """
    from keras_music_ssl.pretext.distribute import Distribution, process_index

    config = PretrainConfig(**settings)
    try:
        distribution = Distribution(distribute, devices)
    except ValueError as error:
        raise PretrainError(str(error)) from None
    out = os.path.abspath(os.fspath(out))
    if process_index():
        out = os.path.join(out, f"process-{process_index()}")
    storage.check_output(out, "folder")
    check_run_folder(out, config)
    if os.path.exists(os.path.join(out, "summary.json")):
        summary = storage.read_json(os.path.join(out, "summary.json"), "the run's summary")
        print(f"{out}: finished already ({config.method}, {config.epochs} epochs)", flush=True)
        return summary
    with distribution.scope():
        return _run(out, config, distribution, data_dir, verbose)


def _run(out, config, distribution, data_dir, verbose):
    import keras

    model = build_model(config)  # first: a bad method option fails before any data is built
    keras.utils.set_random_seed(config.seed)  # before the datasets: tf.data shuffles use the global seed
    train, valid, data_name = resolve_data(config, data_dir, progress=bool(verbose))
    curve = _learning_curve(config, out, data_dir)
    # Only now: settings refused above leave no run folder that a corrected command would clash with.
    with storage.locked(out):
        check_run_folder(out, config)  # again, with the lock: another process may have just started it
        storage.clean_partials(out)
        storage.clean_partials(os.path.join(out, "backup"))
        storage.clean_partials(os.path.join(out, "checkpoints"))
        storage.write_json(os.path.join(out, "config.json"), {
            "config": config.to_dict(), "backend": keras.backend.backend(), "keras": keras.__version__,
            "distribute": distribution.name, "devices": [str(d) for d in distribution.devices],
            "rerun": f"keras_music_ssl.pretrain({out!r}, **config)"})
        # After config.json, which ties the folder to these settings. model is as built: the run's
        # initial weights (a run resumed from an older version gets them rebuilt alike).
        initial = os.path.join(out, INITIAL)
        if not os.path.isdir(initial):
            _save_initial(initial, model.encoder, config)
        return _fit(out, config, model, train, valid, data_name, distribution, verbose, curve)


INITIAL = "initial"


def _save_initial(path, encoder, config):
    """The encoder as built, before any step, as a preset (renamed into place once complete)."""
    storage.require_space(os.path.dirname(path), storage.model_bytes(encoder))
    procedure = (f"Not trained: the random initialisation of a `kmssl pretrain` run ({config.encoder} encoder, "
                 f"seed {config.seed}), kept as the floor of its own configuration: a probe on it shows what the "
                 "architecture gives before any pretraining.")
    with storage.atomic_target(path) as tmp:
        encoder.save_to_preset(tmp, source="keras_music_ssl.pretrain (initial weights)", encoder=config.encoder,
                               seed=config.seed, training_procedure=procedure)


def _restore(out, config, model):
    """(model, finished epochs) from the run's backup; a backup none of whose states loads is
    reported and the run starts afresh from a newly built model."""
    from keras_music_ssl import backup

    try:
        return model, backup.restore(model, os.path.join(out, "backup"))
    except storage.StorageError as error:
        print(f"{error}; starting the run afresh", flush=True)
        shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
        return build_model(config), 0


def _learning_curve(config, out, data_dir):
    """The run's ``LearningCurve`` callback, or None; its dataset is loaded and checked here, before
    the run folder is written, so a --probe-dataset mistake leaves nothing behind."""
    from keras_music_ssl.pretext.distribute import process_count

    if not config.probe_every:
        return None
    if process_count() > 1:
        print("several processes: the learning curve is off (it runs on one host)", flush=True)
        return None
    from keras_music_ssl.probe.curve import LearningCurve

    dataset = config.probe_dataset
    if dataset is None:
        from keras_music_ssl.data.embedded import embedded_dataset

        dataset = embedded_dataset(config.dataset_size, config.seed, data_dir, progress=False).root
    return LearningCurve(dataset, config.probe_every, run_dir=out, history=os.path.join(out, "history.csv"),
                         seed=config.seed)


def _fit(out, config, model, train, valid, data_name, distribution, verbose, curve=None):
    import keras

    from keras_music_ssl.backup import Backup, Checkpoint
    from keras_music_ssl.data.pipelines import ViewSamplerCounts, pretraining_dataset
    from keras_music_ssl.pretext import CollapseMonitor
    from keras_music_ssl.pretext.distribute import process_count

    model, done = _restore(out, config, model)
    keras.utils.set_random_seed(config.seed)  # the datasets' shuffles, whatever the restore drew
    history_csv = os.path.join(out, "history.csv")
    keep_history(history_csv, done)
    sampler = sampler_of(config)
    if isinstance(train, list) and not config.audio_cache:
        print("training straight from audio files decodes every track on each pass (about a third of what the "
              "paper's encoder consumes on 2 CPU cores): --audio-cache DIR decodes once, kmssl prepare "
              "writes shards", flush=True)
    views = pretraining_dataset(train, batch_size=config.batch_size, sampler=sampler, seed=config.seed,
                                views_per_track=config.views_per_track, cache_dir=config.audio_cache)
    if done:  # continue the stream where the backup left it
        views = views.skip(done * config.steps_per_epoch)
        print(f"{out}: resuming after epoch {done} of {config.epochs}", flush=True)

    callbacks = [epoch_seconds_callback(), ViewSamplerCounts(sampler)]
    if curve is not None:  # after EpochSeconds (its minutes leave the probe's own time out)
        callbacks.append(curve)
    if valid is None:
        print("no validation data: the collapse monitor is off (pass valid_data / --valid-data)", flush=True)
    elif process_count() > 1:  # Keras' predict cannot fetch arrays that span other processes
        print("several processes: the collapse monitor is off (it runs on one host)", flush=True)
    else:
        callbacks.append(CollapseMonitor(_monitor_views(valid, config), prefix="val_"))
    callbacks += [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(history_csv, append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        Checkpoint(os.path.join(out, "checkpoints"), config.checkpoint_every),
        Backup(os.path.join(out, "backup")),  # last: it follows the CSV row and the checkpoint of its epoch
    ]
    history = model.fit(views, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                        initial_epoch=done, callbacks=callbacks, verbose=keras_verbosity(verbose))
    if model.stop_training:
        epoch = (history.epoch[-1] + 1) if history.epoch else done + 1
        raise PretrainError(f"{out}: the loss became NaN or infinite in epoch {epoch} (a learning rate too high, "
                            f"or bad data?); training stopped, the last good state (epoch {epoch - 1}) is kept")

    storage.require_space(out, 2 * storage.model_bytes(model))  # model.keras and the preset
    with storage.atomic_target(os.path.join(out, "model.keras"), ".keras") as tmp:
        model.save(str(tmp))
    preset = os.path.join(out, "preset")
    # The run's settings and data go into the preset for its model card (card.py). The card is
    # meant to be published, so paths keep their last component only (no home folders).
    settings = {key: os.path.basename(os.path.normpath(value))
                if key in ("data", "valid_data", "audio_cache", "probe_dataset") and value else value for key, value in config.to_dict().items()}
    dataset = {"name": data_name, "description": (
        f"the embedded rendered dataset ({config.dataset_size} size, seed {config.seed}): scores of music21's "
        "corpus played by a General MIDI SoundFont (pretty_midi's TimGM6mb), rendered at 16 kHz mono "
        "(keras_music_ssl.data.rendered)" if config.data is None else
        "the run's own audio (prepared shards, an audio folder or a manifest)")}
    if config.data is None:
        dataset["licence"] = ("public-domain scores and the Essen folk songs, given for non-commercial use "
                              "(music21's corpus notes)." if config.dataset_size == "full" else
                              "public-domain scores (music21's corpus notes).")
    model.encoder.save_to_preset(preset, method=config.method, source="keras_music_ssl.pretrain",
                                 data=data_name, encoder=config.encoder, epochs=config.epochs,
                                 steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size,
                                 seed=config.seed, training=settings, dataset=dataset)
    rows = read_history(history_csv)
    summary = {"method": config.method, "encoder": config.encoder, "data": data_name,
               "backend": keras.backend.backend(), "distribute": distribution.name,
               "devices": distribution.num_devices, "epochs": config.epochs,
               "steps": config.epochs * config.steps_per_epoch, "batch_size": config.batch_size,
               "final": {k: v for k, v in (rows[-1] if rows else {}).items() if math.isfinite(v)},
               "fit_seconds": round(sum(row.get("epoch_seconds", 0.0) for row in rows), 1),
               "preset": preset, "initial_preset": os.path.join(out, INITIAL),
               "model": os.path.join(out, "model.keras")}
    storage.write_json(os.path.join(out, "summary.json"), summary)
    shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)  # only now: until summary.json, a rerun resumes
    return summary


def read_history(path):
    """The rows of a run's ``history.csv`` as ``{column: float}`` (empty and ``NA`` cells left out)."""
    import csv

    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        # CSVLogger writes "NA" for val_ columns it adds itself when no val_ log exists
        return [{k: float(v) for k, v in row.items() if v not in ("", "NA", None)} for row in csv.DictReader(f)]
