"""Pretraining as a run: ``keras_music_ssl.pretrain(out, ...)``, the library side of ``kmssl pretrain``.

    from keras_music_ssl import pretrain
    summary = pretrain("runs/byol", method="byol", epochs=20, steps_per_epoch=50)

Any of the five methods, on the current Keras backend, on prepared shards, a folder or manifest
of audio, or (``data=None``) the embedded rendered dataset. The run folder ``out`` holds

    config.json     every setting of the run (``pretrain(out, **config)`` reruns it)
    history.csv     one row per finished epoch: loss, schedules, ``val_embedding_std``, ...
    logs/           TensorBoard
    checkpoints/    ``epochNNN.keras``, the whole pretext model (``keras.saving.load_model``)
    backup/         ``BackupAndRestore`` state while the run is unfinished
    model.keras     the final pretext model
    preset/         the encoder as a preset, for ``kmssl embed`` / ``probe`` / ``export``
    summary.json    written last: the run is finished

Several devices: ``distribute="auto" | "mirrored" | "data_parallel"`` (and ``devices``) train
the same objective on the global batch ``batch_size`` (see ``keras_music_ssl.pretext.distribute``);
it is not a setting of the run, so a run may resume on other devices. In a multi-process JAX
job (``distribute.initialize`` first) process 0 writes ``out`` and process i > 0 its own state
in ``out/process-i/``.

Calling ``pretrain`` again with the same ``out`` and settings resumes a killed run from its
last finished epoch (the data stream skips the batches already trained on, so the result equals
an uninterrupted run), or returns at once if the run finished. Different settings in an
existing run folder are an error, not a silent mix.
"""

import dataclasses
import json
import os
import shutil
import time
import zlib

SEGMENT_SECONDS = 4.0

# Named encoder sizes: the paper's ModifiedResNet and smaller ones for CPU budgets.
ENCODERS = {
    "tiny": dict(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=64),  # tests
    "small": dict(width=8, layers=(1, 1, 1, 1), heads=4, output_dim=256),
    "medium": dict(width=16, layers=(1, 1, 1, 1), heads=8, output_dim=512),
    "paper": dict(width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024),
}
EMA_METHODS = ("byol", "clustering")
HELD_OUT_EVERY = 20  # user data without a validation set: 1 file in 20 monitors collapse


class PretrainError(ValueError):
    """Settings or data that cannot make a run (the CLI prints it in one line)."""


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

    def __post_init__(self):
        from keras_music_ssl.pretext import METHODS

        if self.method not in METHODS:
            raise PretrainError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        from keras_music_ssl.data.rendered import SIZES

        if self.data is None and self.dataset_size not in SIZES:
            raise PretrainError(f"dataset_size must be one of {', '.join(SIZES)}, got {self.dataset_size!r}")
        if self.encoder not in ENCODERS:
            raise PretrainError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "views_per_track", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise PretrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2 or self.views < 2:
            raise PretrainError("batch_size and views must be >= 2 (batch statistics, view pairs)")
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
    from keras_music_ssl.data.pipelines import _is_prepared
    from keras_music_ssl.data.prepare import iter_sources

    if not os.path.exists(path):
        raise PretrainError(f"{name}: {path} not found")
    if _is_prepared(path):
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


def _epoch_seconds_callback():
    import keras

    class EpochSeconds(keras.callbacks.Callback):
        """Adds ``epoch_seconds`` (wall time of the epoch) to the logs, so history.csv keeps it."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = time.perf_counter() - self.started

    return EpochSeconds()


def _finished_epochs(out):
    """Epochs the backup holds (0 when there is none)."""
    try:
        with open(os.path.join(out, "backup", "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def _keep_history(path, epochs):
    """Drop rows of ``history.csv`` for epochs >= ``epochs`` (an epoch that ran but was not backed
    up is trained again), in place."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    if not epochs:
        os.remove(path)
        return
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < epochs]
    with open(path + ".partial", "w") as f:
        f.writelines(kept)
    os.replace(path + ".partial", path)


SAME_RESULTS = {"audio_cache"}  # settings that do not change what is trained: a resume may change them


def _check_run_folder(out, config):
    path = os.path.join(out, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)["config"]
        current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved
        changed = sorted(k for k in (set(saved) | set(current)) - SAME_RESULTS if saved.get(k) != current.get(k))
        if changed:
            raise PretrainError(f"{out} holds a run with other settings ({', '.join(changed)} differ); "
                                "use another output folder, or the same settings to resume it")


def _write_json(path, obj):
    with open(path + ".partial", "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(path + ".partial", path)


def pretrain(out, data_dir=None, verbose=1, distribute=None, devices=None, **settings):
    """Pretrain an encoder with one pretext method; returns the run's summary (also ``summary.json``).

    ``settings`` are the fields of :class:`PretrainConfig` (method, data, encoder, epochs,
    steps_per_epoch, batch_size, views, learning_rate, ...); ``data_dir`` is where the rendered
    dataset is cached (default ``$KMSSL_DATA_DIR`` or ``~/.cache/keras_music_ssl/datasets``);
    ``distribute`` / ``devices``: see ``keras_music_ssl.pretext.distribute.Distribution``
    (None: one device).
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
    _check_run_folder(out, config)
    if os.path.exists(os.path.join(out, "summary.json")):
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        print(f"{out}: finished already ({config.method}, {config.epochs} epochs)", flush=True)
        return summary
    with distribution.scope():
        return _run(out, config, distribution, data_dir, verbose)


def _run(out, config, distribution, data_dir, verbose):
    import keras

    from keras_music_ssl.data.pipelines import ViewSamplerCounts, pretraining_dataset
    from keras_music_ssl.pretext import CollapseMonitor
    from keras_music_ssl.pretext.distribute import process_count

    model = build_model(config)  # first: a bad method option fails before any data is built
    keras.utils.set_random_seed(config.seed)  # before the datasets: tf.data shuffles use the global seed
    train, valid, data_name = resolve_data(config, data_dir, progress=bool(verbose))
    # Only now: settings refused above leave no run folder that a corrected command would clash with.
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "config.json"), {
        "config": config.to_dict(), "backend": keras.backend.backend(), "keras": keras.__version__,
        "distribute": distribution.name, "devices": [str(d) for d in distribution.devices],
        "rerun": f"keras_music_ssl.pretrain({out!r}, **config)"})
    done = _finished_epochs(out)
    history_csv = os.path.join(out, "history.csv")
    _keep_history(history_csv, done)
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

    callbacks = [_epoch_seconds_callback(), ViewSamplerCounts(sampler)]
    if valid is None:
        print("no validation data: the collapse monitor is off (pass valid_data / --valid-data)", flush=True)
    elif process_count() > 1:  # Keras' predict cannot fetch arrays that span other processes
        print("several processes: the collapse monitor is off (it runs on one host)", flush=True)
    else:
        callbacks.append(CollapseMonitor(_monitor_views(valid, config), prefix="val_"))
    callbacks += [
        keras.callbacks.CSVLogger(history_csv, append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoints", "epoch{epoch:03d}.keras"),
                                        save_freq=config.checkpoint_every * config.steps_per_epoch),
        # last: its epoch-end backup follows the CSV row and the checkpoint of that epoch
        keras.callbacks.BackupAndRestore(os.path.join(out, "backup"), delete_checkpoint=False),
    ]
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    history = model.fit(views, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                        callbacks=callbacks, verbose=verbose)
    if model.stop_training and len(history.epoch) and history.epoch[-1] + 1 < config.epochs:
        raise RuntimeError(f"{out}: training stopped early at epoch {history.epoch[-1] + 1} (NaN loss?); "
                           "the last good epoch is in checkpoints/")

    model.save(os.path.join(out, "model.keras"))
    preset = os.path.join(out, "preset")
    model.encoder.save_to_preset(preset, method=config.method, source="keras_music_ssl.pretrain",
                                 data=data_name, encoder=config.encoder, epochs=config.epochs,
                                 steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size,
                                 seed=config.seed)
    shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
    rows = _read_history(history_csv)
    summary = {"method": config.method, "encoder": config.encoder, "data": data_name,
               "backend": keras.backend.backend(), "distribute": distribution.name,
               "devices": distribution.num_devices, "epochs": config.epochs,
               "steps": config.epochs * config.steps_per_epoch, "batch_size": config.batch_size,
               "final": rows[-1] if rows else {},
               "fit_seconds": round(sum(row.get("epoch_seconds", 0.0) for row in rows), 1),
               "preset": preset, "model": os.path.join(out, "model.keras")}
    _write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _read_history(path):
    import csv

    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        # CSVLogger writes "NA" for val_ columns it adds itself when no val_ log exists
        return [{k: float(v) for k, v in row.items() if v not in ("", "NA", None)} for row in csv.DictReader(f)]
