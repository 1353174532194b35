"""Fine-tuning as a run: ``keras_music_ssl.finetune.finetune(out, dataset, preset)``, the library
side of ``kmssl finetune``.

    from keras_music_ssl.finetune import finetune
    summary = finetune("runs/ft", "mtat:/data/mtat", preset="deezer_contrastive")

An encoder preset and a tag head trained end to end on the main task of a labeled dataset (what
``kmssl probe`` takes: a folder with ``metadata.csv``, ``mtat:ROOT``, ``jamendo:ROOT...``; its
first task, or ``task``), on any Keras backend. The recipe (linear probing, then fine-tuning: the
LP-FT order of Kumar et al., ICLR 2022, which keeps a random head from wrecking the features):

1. **Head first, encoder frozen**: the probe harness's probe of the preset (``run_probe``, the
   ``protocol``'s head, loss and early stopping on the validation macro ROC-AUC; ``epochs_head``
   caps its epochs). Its frozen embeddings are cached, so this costs one embedding pass, not one
   per epoch. That head, in the report as ``frozen``, starts phase 2: fine-tuning starts from the
   frozen probe, and is compared with it.
2. **Everything, the encoder slower**: the encoder and the head on the training split's 4 s
   segments (``data/segments.py``: the probe's training rule, RMS-kept, at most 25 per track,
   shuffled), with the probe's loss on logits, Adam at ``learning_rate`` for the head and
   ``learning_rate x encoder_lr_factor`` for the encoder (:class:`FineTuneAdam`: one optimizer,
   a per-variable rate, no backend-specific code). An epoch is one pass over the training
   segments (``steps_per_epoch`` to change it). After each epoch the validation tracks are
   scored as the probe scores them (the head on the mean embedding of a track's whole 4 s
   segments, macro ROC-AUC); the run stops after ``patience`` epochs without a better one and
   keeps the best epoch, the phase-1 model included (so fine-tuning never ends below the frozen
   probe on the validation split).

**BatchNorm stays in inference mode** throughout: the encoder is called with ``training=False``,
so its BatchNorm layers normalise with the statistics pretraining left (never updated), while
their scale and offset train with the rest. Batch statistics of small fine-tuning batches from
a few hundred tracks would move those statistics away from what every layer after them was
trained on (the practice of Keras' transfer-learning guide); and the tagger then computes at
inference exactly what it computed in training.

**Defaults, and what they give.** Adam at 1e-3 for the head (the probe's own rate) and 1e-4 for
the encoder (``encoder_lr_factor`` 0.1), 32 segments a step, at most 10 epochs, patience 3. They
were chosen on the *validation* split of the embedded ``medium`` set (the quickstart's pretrained
contrastive ``medium`` encoder, 4 epochs each) among the (head, encoder) rates (3e-4, 3e-5),
(1e-3, 1e-4), (1e-4, 3e-5) and (3e-4, 3e-4): best validation macro ROC-AUC 0.915, 0.920, 0.914,
0.915, from 0.901 after phase 1 (an encoder as fast as its head starts by unlearning). With
them, on that set's test split (144 clips; macro ROC-AUC, 95 % bootstrap interval): fine-tuned
0.921 [0.898, 0.947], the frozen probe 0.903 [0.876, 0.930], ``medium-init`` 0.875, ``random``
0.893, ``logmel-stats`` 0.894, each difference beyond the noise (fine-tuned - frozen: +0.018,
paired interval [+0.006, +0.029]); best epoch 6 of 9, 7 min on one CPU core (TensorFlow: phase 1
35 s, phase 2 4.1 min, the report with its floors 1.8 min).

The run folder ``out`` follows ``kmssl pretrain``'s conventions:

    config.json     every setting (``finetune(out, **config)`` reruns it) and the preset's weights fingerprint
    probe/          phase 1 and the report's floors: the probe harness's own report (frozen, floors)
    phase1.json     the validation ROC-AUC of the phase-1 model (encoder as the preset, the probe's head)
    history.csv     one row per phase-2 epoch: loss, ``val_roc_auc_macro``, ``epoch_seconds``, ...
    logs/           TensorBoard
    checkpoints/    ``phase1.keras`` and ``epochNNN.keras``: the training model (:class:`FineTuner`)
    backup/         the last two epochs' training state while the run is unfinished (``backup.py``)
    model.keras     the fine-tuned ``MusicTagger`` (the best epoch)
    preset/         its encoder as a preset, with a card saying what it was fine-tuned on
    head.keras      its head (``save_tag_head``): ``kmssl export --preset RUN/preset --head RUN/head.keras``
    results.json    the report: ``finetuned`` beside ``frozen`` and the floors (the same-config
    results.md      random init ``<size>-init``, ``random``, ``logmel-stats``), test split, the
    results.csv     harness's bootstrap (same resamples: the verdict's differences are paired)
    bootstrap.png
    predictions/    ``finetuned.npz``: the test tracks' probabilities
    summary.json    written last: the run is finished

Calling ``finetune`` again with the same ``out`` and settings resumes a killed run where it
stopped (the probe harness resumes phase 1; phase 2 continues from its last finished epoch,
its data stream skipping what was trained on), or returns at once if the run finished. Other
settings, or a preset whose weights changed, in an existing run folder are an error; so is a
second process on it. Every setting, the dataset and the preset are checked before anything is
written.
"""

import dataclasses
import math
import os
import shutil
import time

import keras
import numpy as np
from keras import ops

from keras_music_ssl import storage
from keras_music_ssl.errors import KmsslError
from keras_music_ssl.tagger import EncoderAndHead
from keras_music_ssl.train import check_run_folder, checked, epoch_seconds_callback, keep_history, read_history

FROZEN = "frozen"  # the report's row of the preset with the phase-1 head (the frozen probe)
FINETUNED = "finetuned"
MONITOR = "val_roc_auc_macro"
PHASE1 = "phase1.json"
SHUFFLE_BUFFER = 512  # training segments (4 s, 256 kB each) mixed across tracks
SOURCE = "keras_music_ssl.finetune"


class FinetuneError(KmsslError, ValueError):
    """Settings that cannot make a fine-tuning run (the CLI prints it in one line)."""


RANGES = {
    "epochs_head": (int, 1, None, True), "epochs": (int, 1, None, True), "steps_per_epoch": (int, 1, None, True),
    "batch_size": (int, 2, None, True), "learning_rate": (float, 0.0, 1.0, False),
    "encoder_lr_factor": (float, 0.0, 10.0, True), "patience": (int, 1, None, True),
    "bootstrap": (int, 1, None, True), "seed": (int, 0, 2**32 - 1, True),
}


@dataclasses.dataclass
class FinetuneConfig:
    """The settings of one fine-tuning run; ``config.json`` holds them (see the module docstring)."""

    dataset: str = None  # what `kmssl probe` takes
    preset: str = None  # the encoder to start from: a preset folder, a named preset, a hub handle
    task: str = None  # the task to fine-tune (None: the dataset's main task)
    protocol: str = "paper"  # the probe's head, loss and phase-1 training (probe/probe.py)
    epochs_head: int = None  # phase 1: at most this many probe epochs (None: the protocol's, early-stopped)
    epochs: int = 10  # phase 2: at most this many epochs
    steps_per_epoch: int = None  # None: one pass over the training segments
    batch_size: int = 32
    learning_rate: float = 1e-3  # the head's in phase 2 (the probe's own)
    encoder_lr_factor: float = 0.1  # the encoder's learning rate is learning_rate x this
    patience: int = 3  # phase-2 epochs without a better validation ROC-AUC before stopping
    bootstrap: int = 50  # test resamples of the report
    seed: int = 0

    def __post_init__(self):
        from keras_music_ssl.probe.probe import PROTOCOLS

        for name in ("dataset", "preset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise FinetuneError(f"{name} must be given (a path or name), got {getattr(self, name)!r}")
        if self.task is not None and (not isinstance(self.task, str) or not self.task):
            raise FinetuneError(f"task must be a task name, got {self.task!r}")
        if self.protocol not in PROTOCOLS:
            raise FinetuneError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        for name, rule in RANGES.items():
            if getattr(self, name) is not None:
                setattr(self, name, checked(name, getattr(self, name), *rule, error=FinetuneError))

    def to_dict(self):
        return dataclasses.asdict(self)


# --- the model, its optimizer and loss (backend-agnostic: keras.ops only) ---------------------------

@keras.saving.register_keras_serializable(package="keras_music_ssl")
class FineTuneAdam(keras.optimizers.Adam):
    """Adam whose encoder variables step at ``learning_rate * encoder_lr_factor`` (the others, the
    head's, at ``learning_rate``). :class:`FineTuner` names the encoder's variables at ``compile``."""

    def __init__(self, learning_rate=1e-3, encoder_lr_factor=0.1, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.encoder_lr_factor = float(encoder_lr_factor)
        self._encoder_keys = frozenset()

    def set_encoder_variables(self, variables):
        self._encoder_keys = frozenset(self._var_key(v) for v in variables)

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._encoder_keys:
            learning_rate = ops.multiply(learning_rate, self.encoder_lr_factor)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "encoder_lr_factor": self.encoder_lr_factor}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class TagLoss(keras.losses.Loss):
    """The probe's loss on logits: ``downstream`` (the authors', the paper protocol), ``bce``
    (MARBLE's) or ``softmax`` (a single-label task)."""

    KINDS = ("downstream", "bce", "softmax")

    def __init__(self, kind="downstream", name="tag_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    def call(self, y_true, y_pred):
        from keras_music_ssl.probe.probe import downstream_loss

        y_true = ops.cast(y_true, y_pred.dtype)
        if self.kind == "downstream":
            return downstream_loss(y_true, y_pred)
        if self.kind == "softmax":
            return keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=True)
        return keras.losses.binary_crossentropy(y_true, y_pred, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class FineTuner(EncoderAndHead, keras.Model):
    """Waveform (batch, num_samples) -> tag logits: ``head(encoder(x))``, the encoder always in
    inference mode (BatchNorm statistics frozen; its weights still train). ``head`` is a
    ``TagHead`` with ``activation=None``. ``compile`` tells a :class:`FineTuneAdam` which
    variables are the encoder's."""

    def __init__(self, encoder, head, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = head
        self.built = True  # both parts are built

    def call(self, waveform, training=False):
        # A tensor, never a numpy array: on an array the encoder's FastInference would answer from
        # its compiled inference function, outside the gradient (JAX's eager steps hand over numpy).
        waveform = ops.convert_to_tensor(waveform, "float32")
        return self.head(self.encoder(waveform, training=False), training=training)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        if isinstance(self.optimizer, FineTuneAdam):
            self.optimizer.set_encoder_variables(self.encoder.trainable_variables)
        self.optimizer.build(self.trainable_variables)  # now, not inside the first traced step

    def compile_from_config(self, config):
        # Keras skips this for an overridden compile(); the saved config holds optimizer and loss.
        self.compile(**keras.saving.deserialize_keras_object(config))



def loss_kind(task, protocol):
    from keras_music_ssl.probe.probe import protocol_settings

    if task.single_label:
        return "softmax"
    return "downstream" if protocol_settings(protocol)["loss"] == "downstream" else "bce"


def _activate(logits, activation):
    logits = np.asarray(logits, np.float64)
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


# --- validation: tracks scored as the probe scores them ------------------------------------------

def _evaluation_chunker(num_samples):
    """The probe harness's valid/test rule (``probe/extract.py``): a track is the mean of its whole
    4 s segments (``track.evaluation_chunks``), an entirely silent one is left out."""
    from keras_music_ssl.track import UnusableTrack, evaluation_chunks

    def chunker(path, waveform):
        if not np.any(waveform):
            raise UnusableTrack("silent", "every sample is zero")
        return evaluation_chunks(waveform, num_samples, "segments")

    return chunker


class Validation:
    """The macro ROC-AUC of a :class:`FineTuner` on the validation tracks (decoded each time, so a
    large split is never held in memory)."""

    def __init__(self, paths, labels, tags, single_label, batch_size=32):
        self.paths, self.labels, self.tags = list(paths), np.asarray(labels), list(tags)
        self.single_label, self.batch_size = single_label, int(batch_size)

    def __call__(self, model):
        from keras_music_ssl.probe.metrics import tagging_metrics
        from keras_music_ssl.probe.probe import ProbeError

        labels, scores = self.scores(model)
        if scores is None:
            return float("nan")
        try:
            return float(tagging_metrics(labels, scores, self.tags, self.single_label)["roc_auc_macro"])
        except ProbeError:  # NaN scores: a diverged step
            return float("nan")

    def scores(self, model):
        """``(labels, probabilities)`` of the validation tracks that could be used (None, None: none)."""
        from keras_music_ssl.embed import iter_track_embeddings

        kept, rows = [], []
        tracks = iter_track_embeddings(model.encoder, self.paths, self.batch_size,
                                       chunker=_evaluation_chunker(int(model.encoder.num_samples)), mean=True)
        for i, (_, embedding, _) in enumerate(tracks):
            if embedding is not None:
                kept.append(i)
                rows.append(embedding)
        if not rows:
            return None, None
        logits = ops.convert_to_numpy(model.head(ops.convert_to_tensor(np.stack(rows)), training=False))
        return self.labels[kept], _activate(logits, "softmax" if self.single_label else "sigmoid")


def _validation_callback(validation):
    class ValidationROC(keras.callbacks.Callback):
        """Adds ``val_roc_auc_macro`` (and ``val_seconds``) to the epoch logs."""

        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            value = validation(self.model)
            if logs is not None:
                logs[MONITOR] = value
                logs["val_seconds"] = time.perf_counter() - started

    return ValidationROC()


def best_epoch(phase1_value, rows):
    """``(value, epoch)`` of the best validation ROC-AUC so far: epoch 0 is phase 1, epoch e the
    e-th of phase 2 (history row ``e - 1``); ties keep the earlier epoch."""
    best = (phase1_value, 0)
    for row in sorted(rows, key=lambda r: r.get("epoch", 0)):
        value = row.get(MONITOR, float("nan"))
        if math.isfinite(value) and value > best[0]:
            best = (value, int(row["epoch"]) + 1)
    return best


def _early_stopping(best, patience):
    class BestEpoch(keras.callbacks.Callback):
        """Stops after ``patience`` epochs without a better ``val_roc_auc_macro``. Its state is
        what ``history.csv`` says (a resumed run rebuilds it from there); the best weights are
        the checkpoint of that epoch. Last in the list: the epoch's backup is written first."""

        def __init__(self):
            super().__init__()
            self.best = best

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(MONITOR, float("nan"))
            if math.isfinite(value) and value > self.best[0]:
                self.best = (value, epoch + 1)
            elif epoch + 1 - self.best[1] >= patience:
                self.model.stop_training = True

    return BestEpoch()


# --- the run -----------------------------------------------------------------------------------

def _select(spec, task):
    """The validated ``ProbeData`` of ``spec`` with one task (``task``, else the main one), scorable."""
    from keras_music_ssl.probe.datasets import ProbeData, load_probe_dataset, select_tasks, validate
    from keras_music_ssl.probe.harness import check_scorable

    data = load_probe_dataset(spec)
    name = task or data.dataset.tasks[0].name
    data = ProbeData(data.name, *validate(select_tasks(data.dataset, [name])))
    return check_scorable(data, explicit=True)


def finetune(out, dataset=None, preset=None, cache_dir=None, verbose=1, floors=True, **settings):
    """Fine-tune ``preset`` on ``dataset`` into the run folder ``out``; returns the run's summary
    (also ``summary.json``). ``settings`` are the other fields of :class:`FinetuneConfig`;
    ``cache_dir``: the probe harness's embedding cache (default ``$KMSSL_CACHE_DIR`` or
    ``~/.cache/keras_music_ssl/embeddings``); ``floors=False``: the report sets the fine-tuned
    tagger beside the frozen probe only (the floors embed the dataset three more times, one of
    them with the paper-size encoder). Neither changes what is trained: they are not settings."""
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.probe.harness import default_cache_dir

    config = FinetuneConfig(dataset=None if dataset is None else os.fspath(dataset),
                            preset=None if preset is None else os.fspath(preset), **settings)
    out = os.path.abspath(os.fspath(out))
    cache_dir = os.fspath(cache_dir) if cache_dir else default_cache_dir()
    storage.check_output(out, "folder")
    storage.check_output(cache_dir, "folder", "--cache-dir")
    check_run_folder(out, config, FinetuneError, same_results=())
    if os.path.exists(os.path.join(out, "summary.json")):
        summary = storage.read_json(os.path.join(out, "summary.json"), "the run's summary")
        print(f"{out}: finished already (fine-tuned {summary.get('task')} of {summary.get('dataset')})", flush=True)
        _say(verbose, summary.get("verdict", ""))
        return summary
    # Checked before the folder is written: a mistake leaves nothing a corrected command would clash with.
    data = _select(config.dataset, config.task)
    encoder = MusicEncoder.from_preset(config.preset)
    fingerprint = storage.weights_fingerprint(encoder)
    with storage.locked(out):
        check_run_folder(out, config, FinetuneError, same_results=())
        path = os.path.join(out, "config.json")
        if os.path.exists(path) and storage.read_json(path).get("preset_fingerprint") not in (None, fingerprint):
            raise FinetuneError(f"{out} started from other weights than {config.preset} holds now (the preset "
                                "changed); use another output folder")
        for folder in ("", "backup", "checkpoints", "predictions"):
            storage.clean_partials(os.path.join(out, folder))
        storage.write_json(path, {
            "config": config.to_dict(), "preset_fingerprint": fingerprint, "backend": keras.backend.backend(),
            "keras": keras.__version__, "rerun": f"keras_music_ssl.finetune.finetune({out!r}, **config)"})
        return _run(out, config, data, encoder, cache_dir, verbose, floors)


def _probe_settings(config):
    return {"protocol": config.protocol, "bootstrap": config.bootstrap, "seed": config.seed,
            **({"epochs": config.epochs_head} if config.epochs_head else {})}


def _run(out, config, data, encoder, cache_dir, verbose, floors):
    from keras_music_ssl.probe.harness import run_probe
    from keras_music_ssl.tagger import load_tag_head

    task = data.dataset.tasks[0]
    progress = bool(verbose)
    # Phase 1: the probe of the frozen preset (resumable: the harness keeps its state in probe/).
    _say(verbose, f"phase 1: a {config.protocol} probe of the frozen encoder on {data.name} [{task.name}]")
    probe_dir = os.path.join(out, "probe")
    frozen = run_probe(data, [(FROZEN, encoder)], probe_dir, baseline=False, cache_dir=cache_dir, progress=progress,
                       **_probe_settings(config))["models"][FROZEN]
    head = load_tag_head(os.path.join(probe_dir, "heads", f"{FROZEN}.keras"))
    steps = config.steps_per_epoch or max(1, math.ceil(frozen["train_segments"] / config.batch_size))

    # Phase 2: a copy of the preset, so that ``encoder`` stays the frozen one for the report.
    from keras_music_ssl.backbone import MusicEncoder

    model = _build(MusicEncoder.from_preset(config.preset), head, config, task)
    valid = data.dataset.split("valid")
    labels, labelled = task.labels(valid.rows)
    validation = Validation([p for p, keep in zip(valid.paths, labelled) if keep], labels[labelled],
                            task.classes, task.single_label)
    phase1 = _phase1(out, model, validation, verbose)
    _say(verbose, f"phase 2: encoder and head, {steps} steps of {config.batch_size} segments per epoch, learning rate "
                  f"{config.learning_rate:g} (encoder {config.learning_rate * config.encoder_lr_factor:g}), at most "
                  f"{config.epochs} epochs; validation ROC-AUC after phase 1: {phase1['val_roc_auc_macro']:.4f}")
    model, best = _fit(out, config, model, data, task, steps, validation, phase1["val_roc_auc_macro"], verbose)
    return _finish(out, config, data, task, encoder, model, best, frozen, phase1, steps, cache_dir, verbose, floors,
                   validation)


def _say(verbose, text):
    if verbose:
        print(text, flush=True)


def _build(encoder, head, config, task):
    model = FineTuner(encoder, head.with_activation(None))
    model.compile(optimizer=FineTuneAdam(config.learning_rate, config.encoder_lr_factor),
                  loss=TagLoss(loss_kind(task, config.protocol)))
    return model


def _save_model(model, path):
    storage.require_space(os.path.dirname(path), storage.model_bytes(model))
    with storage.atomic_target(path, ".keras") as tmp:
        model.save(str(tmp))


def _phase1(out, model, validation, verbose):
    """``phase1.json`` (the phase-1 model's validation ROC-AUC) and ``checkpoints/phase1.keras``."""
    path = os.path.join(out, PHASE1)
    checkpoint = os.path.join(out, "checkpoints", "phase1.keras")
    if os.path.exists(path) and os.path.exists(checkpoint):
        return storage.read_json(path, "phase 1's result")
    started = time.perf_counter()
    value = validation(model)
    if not math.isfinite(value):
        raise FinetuneError("the phase-1 model scores the validation tracks with NaN: the preset or the probe is broken")
    _save_model(model, checkpoint)
    result = {"val_roc_auc_macro": value, "valid_tracks": len(validation.paths),
              "seconds": round(time.perf_counter() - started, 2)}
    storage.write_json(path, result)
    return result


def _training_stream(dataset, task, config, done, steps, num_samples):
    """Batches (segments, labels) of the task's training tracks, repeated; the first ``done``
    epochs' batches skipped (a resumed run continues the stream where it stopped).

    Every iterator of the returned dataset yields the same sequence: it builds the pipeline anew.
    A ``tf.data`` shuffle reshuffles for each new iterator, and Keras' PyTorch and JAX trainers
    open one to peek at a batch before training on a second; a resumed run would then train on
    another order than the uninterrupted one did."""
    import tensorflow as tf

    from keras_music_ssl.data.labeled_csv import LabeledDataset
    from keras_music_ssl.data.segments import segment_dataset

    train = dataset.split("train")
    labels, labelled = task.labels(train.rows)
    # segment_dataset reads multi-hot labels from a `tags` column: the task's classes by index
    # (a class name may hold any character, an index none that the column splits on).
    rows = [{"path": row["path"], "split": "train", "tags": ";".join(str(i) for i in np.flatnonzero(label))}
            for row, label, keep in zip(train.rows, labels, labelled) if keep]
    indexed = LabeledDataset(train.root, [str(i) for i in range(len(task.classes))], rows)

    def batches():
        stream = segment_dataset(indexed, "train", batch_size=config.batch_size, seed=config.seed,
                                 shuffle_buffer=SHUFFLE_BUFFER, segment_samples=num_samples)
        yield from (stream.skip(done * steps) if done else stream).as_numpy_iterator()

    signature = (tf.TensorSpec((None, num_samples), tf.float32), tf.TensorSpec((None, len(task.classes)), tf.float32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(1)


def _restore(out, model, build):
    from keras_music_ssl import backup

    try:
        return model, backup.restore(model, os.path.join(out, "backup"))
    except storage.StorageError as error:
        print(f"{error}; starting phase 2 afresh", flush=True)
        shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
        return build(), 0


def _fit(out, config, model, data, task, steps, validation, phase1_value, verbose):
    """Phase 2, resumable; returns the model with the best epoch's weights and ``best_epoch``'s
    ``(validation ROC-AUC, epoch)``."""
    from keras_music_ssl.backup import Backup, Checkpoint

    start = {"encoder": model.encoder.get_weights(), "head": model.head.get_weights()}

    def rebuilt():
        model.encoder.set_weights(start["encoder"])
        model.head.set_weights(start["head"])
        return _build(model.encoder, model.head, config, task)

    model, done = _restore(out, model, rebuilt)
    history_csv = os.path.join(out, "history.csv")
    keep_history(history_csv, done)
    best = best_epoch(phase1_value, read_history(history_csv))
    if done < config.epochs and done - best[1] < config.patience:
        keras.utils.set_random_seed(config.seed)  # the data stream's shuffles, whatever the restore drew
        stream = _training_stream(data.dataset, task, config, done, steps, int(model.encoder.num_samples))
        if done:
            print(f"{out}: resuming phase 2 after epoch {done} of {config.epochs}", flush=True)
        callbacks = [_validation_callback(validation), epoch_seconds_callback(),  # EpochSeconds counts validation
                     keras.callbacks.TerminateOnNaN(),
                     keras.callbacks.CSVLogger(history_csv, append=True),
                     keras.callbacks.TensorBoard(os.path.join(out, "logs")),
                     Checkpoint(os.path.join(out, "checkpoints")),
                     Backup(os.path.join(out, "backup")),
                     _early_stopping(best, config.patience)]  # last: it follows the epoch's backup
        history = model.fit(stream, epochs=config.epochs, steps_per_epoch=steps, initial_epoch=done,
                            callbacks=callbacks, verbose=verbose, shuffle=False)  # the stream shuffles itself
        logs = history.history
        if model.stop_training and logs.get("loss") and not math.isfinite(logs["loss"][-1]):
            epoch = (history.epoch[-1] + 1) if history.epoch else done + 1
            raise FinetuneError(f"{out}: the loss became NaN or infinite in epoch {epoch} (a learning rate too high?); "
                                f"training stopped, the last good state (epoch {epoch - 1}) is kept")
        best = best_epoch(phase1_value, read_history(history_csv))
    checkpoint = os.path.join(out, "checkpoints", "phase1.keras" if best[1] == 0 else f"epoch{best[1]:03d}.keras")
    chosen = keras.saving.load_model(checkpoint, compile=False)
    model.encoder.set_weights(chosen.encoder.get_weights())
    model.head.set_weights(chosen.head.get_weights())
    return model, best


def _same_config_floor(preset, seed):
    """``(name, MusicEncoder)``: the preset's configuration at random init, or None when that is the
    ``random`` floor already. The ``initial/`` of a ``kmssl pretrain`` run folder when the preset is
    that run's; else built here, seeded."""
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.compare import same_config_floor
    from keras_music_ssl.presets import preset_metadata, resolve_preset
    from keras_music_ssl.probe.models import RANDOM, resolve_model
    from keras_music_ssl.train import INITIAL

    folder = resolve_preset(preset)
    size = preset_metadata(folder).get("encoder") or "same-config"
    run = os.path.dirname(os.path.abspath(folder))
    if (os.path.isfile(os.path.join(run, "config.json")) and os.path.isdir(os.path.join(run, INITIAL))
            and os.path.basename(os.path.normpath(folder)) != INITIAL):
        return same_config_floor(run, size, seed)
    keras.utils.set_random_seed(seed)
    model = MusicEncoder.from_preset(folder, load_weights=False)
    if storage.weights_fingerprint(model) == resolve_model(RANDOM, seed).fingerprint:
        return None
    return f"{size}-init", model


def _finish(out, config, data, task, encoder, model, best, frozen, phase1, steps, cache_dir, verbose, floors,
            validation):
    from keras_music_ssl.probe.harness import run_probe
    from keras_music_ssl.probe.report import markdown_table, write_report
    from keras_music_ssl.probe.verdict import verdict
    from keras_music_ssl.tagger import MusicTagger, save_tag_head

    started = time.perf_counter()
    activation = "softmax" if task.single_label else "sigmoid"
    tagger = MusicTagger(model.encoder, model.head.with_activation(activation))
    if not task.single_label:  # decisions, as the probe's heads: per tag, max F1 on the validation tracks
        from keras_music_ssl.probe.thresholds import f1_thresholds

        labels, scores = validation.scores(model)
        if scores is not None:
            tagger.head.thresholds = [float(t) for t in f1_thresholds(labels, scores.astype(np.float32))]
    _save_model(tagger, os.path.join(out, "model.keras"))
    storage.require_space(out, storage.model_bytes(tagger.head))
    with storage.atomic_target(os.path.join(out, "head.keras"), ".keras") as tmp:
        save_tag_head(tagger.head, str(tmp))
    value, epoch = best
    _save_preset(out, config, data, task, tagger.encoder, value, epoch)

    # The report: the frozen probe (phase 1, kept) and the floors by the harness, the fine-tuned
    # tagger on the same test tracks, by the harness's rule and bootstrap.
    _say(verbose, "report: " + ("the probe harness on the floors, " if floors else "")
         + "the fine-tuned tagger on the test split")
    models = [(FROZEN, encoder)]
    if floors:
        floor = _same_config_floor(config.preset, config.seed)
        models += [*([floor] if floor else []), "random"]
    results = run_probe(data, models, os.path.join(out, "probe"), baseline=floors, cache_dir=cache_dir,
                        progress=bool(verbose), **_probe_settings(config))
    row, probabilities, test = _evaluate(tagger, data, task, config, cache_dir, verbose)
    row.update(best_epoch=epoch, exportable=True,
               tracks={**frozen["tracks"], "valid": phase1["valid_tracks"], "test": len(test.paths)},
               train_segments=frozen["train_segments"])
    with storage.atomic_write(os.path.join(out, "predictions", f"{FINETUNED}.npz"), "wb") as f:
        np.savez(f, paths=np.asarray(test.paths, dtype=str), labels=test.labels,
                 probabilities=probabilities.astype(np.float32), tags=np.asarray(task.classes, dtype=str))
    rows = read_history(os.path.join(out, "history.csv"))
    seconds = {"phase1_extract": frozen["seconds"]["extract"], "phase1_fit": frozen["seconds"]["fit"],
               "phase1_validation": phase1["seconds"],
               "phase2": round(sum(r.get("epoch_seconds", 0.0) for r in rows), 1)}
    row["seconds"] = dict(seconds)
    results = dict(results)
    results["models"] = {FINETUNED: row, **results["models"]}
    results["tasks"] = {name: {**entry, "models": {FINETUNED: row, **entry["models"]}} if name == task.name else entry
                        for name, entry in results["tasks"].items()}
    results["finetune"] = {"config": config.to_dict(), "steps_per_epoch": steps, "epochs_run": len(rows),
                           "best_epoch": epoch, "best_val_roc_auc_macro": value,
                           "phase1_val_roc_auc_macro": phase1["val_roc_auc_macro"]}
    write_report(results, out)
    floors = [name for name in results["models"] if name != FINETUNED]
    tests = {name: r["test"] for name, r in results["models"].items()}
    line = verdict(tests, FINETUNED, floors)
    seconds["report"] = round(time.perf_counter() - started, 1)
    summary = {"dataset": data.name, "task": task.name, "type": task.type, "preset": config.preset,
               "backend": keras.backend.backend(), "steps_per_epoch": steps, "epochs_run": len(rows),
               "best_epoch": epoch, "phase1_val_roc_auc_macro": phase1["val_roc_auc_macro"],
               "best_val_roc_auc_macro": value, "seconds": seconds,
               "test": {name: {"roc_auc": t["roc_auc_macro"]["point"], "roc_auc_ci95": t["roc_auc_macro"]["ci95"],
                               "pr_auc": t["pr_auc_macro"]["point"]} for name, t in tests.items()},
               "floors": floors, "verdict": line,
               "model": os.path.join(out, "model.keras"), "preset_out": os.path.join(out, "preset"),
               "head": os.path.join(out, "head.keras"), "report": os.path.join(out, "results.md")}
    if verbose:
        print(markdown_table({**results, "tasks": {task.name: results["tasks"][task.name]}}))
        print(line)
    storage.write_json(os.path.join(out, "summary.json"), summary)
    shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)  # only now: until summary.json, a rerun resumes
    return summary


def _evaluate(tagger, data, task, config, cache_dir, verbose):
    """(result row, test probabilities, the test ``SplitFeatures``) of the fine-tuned tagger: the
    harness's evaluation rule (a track is the mean embedding of its whole 4 s segments, then the
    head) and bootstrap (same seed and resamples as the report's other rows)."""
    from keras_music_ssl.probe.extract import extract_split
    from keras_music_ssl.probe.metrics import bootstrap_metrics
    from keras_music_ssl.probe.models import probed_model

    started = time.perf_counter()
    probed = probed_model(tagger.encoder, FINETUNED)
    split = extract_split(probed, data.dataset, "test", cache_dir, seed=config.seed, progress=bool(verbose))
    test = split.for_task(task, data.dataset.split("test").rows)
    probabilities = np.asarray(ops.convert_to_numpy(tagger.head(ops.convert_to_tensor(test.features),
                                                                 training=False)), np.float64)
    metrics = bootstrap_metrics(test.labels, probabilities, task.classes, config.bootstrap, config.seed,
                                task.single_label, thresholds=tagger.head.thresholds)
    row = {"type": task.type, "test": metrics, "embedding_dim": int(test.features.shape[1]),
           "fingerprint": probed.fingerprint, "skipped": {"test": split.skipped_counts()},
           "evaluate_seconds": round(time.perf_counter() - started, 2)}
    return row, probabilities, test


def preset_name(preset):
    """How a card names the preset a run started from: a named preset or hub handle as given, a folder
    by its name, with its run folder's for the ``preset`` / ``initial`` of a ``kmssl pretrain`` run."""
    from keras_music_ssl.train import INITIAL

    preset = os.fspath(preset)
    if not os.path.isdir(preset):
        return preset
    folder = os.path.normpath(os.path.abspath(preset))
    name = os.path.basename(folder)
    if name in ("preset", INITIAL) and os.path.isfile(os.path.join(os.path.dirname(folder), "config.json")):
        return f"{os.path.basename(os.path.dirname(folder))}/{name}"
    return name


def _save_preset(out, config, data, task, encoder, value, epoch):
    """The fine-tuned encoder as a preset; its card says what it started from and was tuned on."""
    from keras_music_ssl.presets import preset_metadata

    base = preset_metadata(config.preset)
    name = preset_name(config.preset)
    if ":" in data.name:  # mtat:ROOT -> mtat, jamendo:ROOT:SUBSET:SPLIT -> jamendo:SUBSET:SPLIT (no home folders)
        kind, _, rest = data.name.partition(":")
        dataset = ":".join([kind, *rest.split(":")[1:]])
    else:
        dataset = os.path.basename(os.path.normpath(data.name))
    settings = {**config.to_dict(), "dataset": dataset, "preset": name}  # published: no home folders
    procedure = (f"Fine-tuned with `kmssl finetune` from the preset `{name}`"
                 + (f" ({base['method']})" if base.get("method") else "")
                 + f" on the {task.type} task `{task.name}` ({len(task.classes)} "
                 f"{'classes' if task.single_label else 'tags'}) of `{dataset}`: first a {config.protocol}-protocol "
                 "probe on the frozen embeddings, then the encoder and that head end to end on the training "
                 f"split's 4 s segments (Adam, head learning rate {config.learning_rate:g}, encoder "
                 f"{config.learning_rate * config.encoder_lr_factor:g}, batch {config.batch_size}, BatchNorm "
                 f"statistics frozen), keeping the epoch of best validation macro ROC-AUC ({value:.4f}, epoch "
                 f"{epoch}{' = the frozen probe' if epoch == 0 else ''}).")
    carried = {key: base[key] for key in ("method", "dataset", "license", "license_name", "license_link", "licence",
                                          "licence_notice", "citation", "paper", "encoder") if base.get(key)}
    preset_dir = os.path.join(out, "preset")
    storage.require_space(out, storage.model_bytes(encoder))
    encoder.save_to_preset(preset_dir, **carried, source=SOURCE, training=settings, training_procedure=procedure,
                           finetuned={"from": name, "from_fingerprint": base.get("weights_fingerprint"),
                                      "dataset": dataset, "task": task.name, "type": task.type,
                                      "classes": list(task.classes), "best_epoch": epoch,
                                      "valid_roc_auc_macro": value})
