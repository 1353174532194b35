"""A probe: a ``TagHead`` trained on frozen embeddings, with one of two protocols.

``paper`` (docs/paper.md#downstream-model): the authors' ``Head(1024, head_feature_dim + [n_tags])``, by default
(``head_feature_dim = []``) one bias-free linear layer; ``hidden_units`` adds their hidden
blocks (Linear no bias -> BN -> ReLU). The authors' ``DownstreamLoss``:

    p = sigmoid(max(z, -10)),   L = -mean[y log p + (1 - y) log(1 - p)]   (logs clamped at -100)

Batch 256 (their loader's default). Their optimiser, learning rate and model selection are not
released: Adam 1e-3, at most 100 epochs, early stopping (patience 10) on the validation macro
ROC-AUC with the best epoch's weights kept, as MARBLE does. An epoch is at least 50 steps
(``min_steps_per_epoch``: the training rows are repeated): the paper's sets give thousands of
steps per epoch, while a few hundred tracks at batch 256 would give 2, and 100 such epochs
leave a linear probe far from converged.

``marble`` (MARBLE's MTT probe, anchors §2.14): one 512-unit hidden layer (Linear -> ReLU),
dropout 0.2, sigmoid cross-entropy, Adam 1e-3, batch 64, at most 100 epochs, ReduceLROnPlateau
(patience 3) and early stopping (patience 10) on the validation macro ROC-AUC.

Both standardise the features with the training rows' mean and std, held inside the head
(``TagHead(standardize=True)``), so the saved head takes raw embeddings and ``kmssl export
--head`` builds a tagger from it. Validation tracks are scored by their mean embedding.

A single-label task (one class per track, ``single_label=True``) trains the same head with a
softmax cross-entropy on the logits and saves it with a softmax on top, in either protocol.
A multi-label head is saved with one decision threshold per tag, chosen on the validation tracks
(``thresholds.py``: maximum F1).
"""

import dataclasses

import numpy as np

from keras_music_ssl.errors import KmsslError, OptionError
from keras_music_ssl.progress import keras_verbosity

PROTOCOLS = {
    "paper": dict(hidden_units=(), use_bias=False, batch_norm=True, dropout=0.0, batch_size=256,
                  learning_rate=1e-3, epochs=100, patience=10, lr_patience=None, loss="downstream",
                  min_steps_per_epoch=50),
    "marble": dict(hidden_units=(512,), use_bias=True, batch_norm=False, dropout=0.2, batch_size=64,
                   learning_rate=1e-3, epochs=100, patience=10, lr_patience=3, loss="bce",
                   min_steps_per_epoch=0),
}
MONITOR = "val_roc_auc_macro"


class ProbeError(KmsslError, ValueError):
    """A probe that cannot be fitted or scored (no usable track, nothing scorable, broken
    embeddings); the message says why in one line."""


def protocol_settings(protocol="paper", **overrides):
    """The protocol's settings with ``overrides`` (``None`` values ignored)."""
    if protocol not in PROTOCOLS:
        raise OptionError(f"--protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    settings = dict(PROTOCOLS[protocol])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings["hidden_units"] = tuple(int(h) for h in settings["hidden_units"])
    return settings


def downstream_loss(y_true, logits):
    """The authors' multi-label loss on logits (module docstring)."""
    from keras import ops

    z = ops.maximum(logits, -10.0)
    log_p = ops.maximum(ops.log_sigmoid(z), -100.0)
    log_not_p = ops.maximum(ops.log_sigmoid(-z), -100.0)
    return -ops.mean(y_true * log_p + (1.0 - y_true) * log_not_p, axis=-1)


def _validation_callback(x_valid, y_valid):
    import keras

    from keras_music_ssl.probe.metrics import scorable_tags

    keep = scorable_tags(y_valid)

    class ValidationROC(keras.callbacks.Callback):
        """Adds ``val_roc_auc_macro`` (tracks of the validation split) to the epoch logs."""

        def on_epoch_end(self, epoch, logs=None):
            from sklearn.metrics import roc_auc_score

            scores = np.asarray(self.model.predict_on_batch(x_valid))  # logits: same ROC-AUC
            value = roc_auc_score(y_valid[:, keep], scores[:, keep], average="macro") if keep.any() else 0.5
            if logs is not None:
                logs[MONITOR] = float(value) if np.isfinite(scores).all() else float("nan")

    return ValidationROC()


@dataclasses.dataclass
class TrainedProbe:
    head: object  # the TagHead (sigmoid outputs, standardisation inside)
    history: dict
    best_epoch: int

    def predict(self, features, batch_size=1024):
        """Tag probabilities (rows, tags) of raw (unstandardised) embeddings."""
        from keras import ops

        rows = [ops.convert_to_numpy(self.head(ops.convert_to_tensor(features[i:i + batch_size]), training=False))
                for i in range(0, len(features), batch_size)]
        return np.concatenate(rows) if rows else np.zeros((0, self.head.num_tags), np.float32)


def train_probe(x_train, y_train, x_valid, y_valid, tags, protocol="paper", seed=0, verbose=0, single_label=False,
                **overrides):
    """Fit a probe on training rows (e.g. segment embeddings) and return a :class:`TrainedProbe`.

    ``x_valid`` / ``y_valid`` (validation tracks) drive early stopping on macro ROC-AUC;
    ``single_label``: one-hot labels, softmax (module docstring).
    ``overrides``: any protocol setting (``hidden_units``, ``epochs``, ``learning_rate``, ...).
    """
    import keras

    from keras_music_ssl.probe.thresholds import f1_thresholds
    from keras_music_ssl.tagger import TagHead

    settings = protocol_settings(protocol, **overrides)
    x_train, y_train = np.asarray(x_train, np.float32), np.asarray(y_train, np.float32)
    x_valid, y_valid = np.asarray(x_valid, np.float32), np.asarray(y_valid, np.float32)
    if not len(x_train):
        raise ProbeError("no training rows to fit a probe on")
    if not (np.isfinite(x_train).all() and np.isfinite(x_valid).all()):
        raise ProbeError("the embeddings hold NaN or infinite values: the frozen model is broken")
    keras.utils.set_random_seed(seed)
    head = TagHead(tags, hidden_units=settings["hidden_units"], use_bias=settings["use_bias"],
                   activation=None, dropout=settings["dropout"], batch_norm=settings["batch_norm"],
                   standardize=True, name="tag_head")
    head.build((None, x_train.shape[1]))
    head.set_standardization(x_train.mean(axis=0), x_train.std(axis=0))
    inputs = keras.Input((x_train.shape[1],), name="embedding")
    logits_model = keras.Model(inputs, head(inputs))
    if single_label:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    elif settings["loss"] == "downstream":
        loss = downstream_loss
    else:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
    logits_model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), loss=loss)
    callbacks = [_validation_callback(x_valid, y_valid)]  # first: the others read its log
    if settings["lr_patience"]:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(MONITOR, mode="max", factor=0.1,
                                                           patience=settings["lr_patience"], verbose=verbose))
    stopper = keras.callbacks.EarlyStopping(MONITOR, mode="max", patience=settings["patience"],
                                            restore_best_weights=True, verbose=verbose)
    callbacks.append(stopper)
    repeats = -(-settings["min_steps_per_epoch"] * settings["batch_size"] // len(x_train))
    if repeats > 1:
        x_train, y_train = np.tile(x_train, (repeats, 1)), np.tile(y_train, (repeats, 1))
    history = logits_model.fit(x_train, y_train, batch_size=settings["batch_size"], epochs=settings["epochs"],
                               shuffle=True, callbacks=callbacks, verbose=keras_verbosity(verbose))
    # The saved head gives probabilities, as a tagger's does: same weights, sigmoid on top.
    final = head.with_activation("softmax" if single_label else "sigmoid")
    trained = TrainedProbe(final, {k: [float(v) for v in vals] for k, vals in history.history.items()},
                           int(stopper.best_epoch))
    if not single_label:  # decisions: per tag, the threshold of maximum F1 on the validation tracks
        final.thresholds = [float(t) for t in f1_thresholds(y_valid, trained.predict(x_valid))]
    return trained
