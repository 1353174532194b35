"""Training on several devices with the engines Keras already has, and the cross-replica
helpers the losses need. With ``base.py``, the only backend-specific code of the pretext methods.

Every loss sees the global batch, as in the authors' code (docs/paper.md#losses: a gradient-preserving
all-gather of the embeddings, SyncBatchNorm), by a different mechanism per backend:

- TensorFlow, ``tf.distribute.MirroredStrategy`` (one host, N devices): each replica runs the
  step on its B / N tracks. ``gather`` all-gathers the projections before the loss (its
  gradient all-reduces the upstream gradients), so every replica computes the same global
  loss; the step divides it by N because the optimizer sums the replicas' gradients.
  BatchNorm is synchronised across replicas inside the training step (``sync_batchnorm``),
  not in the saved configuration, so a checkpoint loads anywhere. The teacher, the DINO
  centre and the step counter are computed from global quantities: every replica assigns
  the same values.
- JAX, ``keras.distribution.DataParallel`` (one host, or several processes joined by
  ``keras.distribution.initialize``): the step is traced once on the global batch, sharded
  over the devices; losses and BatchNorm statistics are global by construction (XLA inserts
  the collectives). ``gather`` is the identity.
- PyTorch: one device. Keras 3 has no multi-device ``fit`` on this backend; train the same
  model on the JAX or TensorFlow backend and load its weights.

Scale with the global batch: B tracks over N devices is the same step as B tracks on one.
"""

import contextlib

import keras

BACKEND = keras.backend.backend()
STRATEGIES = ("auto", "mirrored", "data_parallel")
_ENGINE = {"tensorflow": "mirrored", "jax": "data_parallel"}


def _tf_replica_context():
    """The TensorFlow replica context of a step running on more than one replica, or None."""
    if BACKEND != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync < 2:
        return None
    return context


def num_replicas():
    """How many replicas a TensorFlow step is split over (1 elsewhere: JAX steps are global)."""
    context = _tf_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def gather(x):
    """Concatenate ``x`` over the replicas along axis 0, keeping the gradient to every
    replica's part: the global batch, in the order of the input batch. Identity on one
    replica and on JAX (already global)."""
    context = _tf_replica_context()
    if context is None:
        return x
    import tensorflow as tf

    return tf.ensure_shape(context.all_gather(x, axis=0), [None, *x.shape[1:]])  # keep the static dims


def scale_loss(loss):
    """The replica's share of a global loss: the optimizer sums the replicas' gradients."""
    n = num_replicas()
    return loss if n == 1 else loss / n


@contextlib.contextmanager
def sync_batchnorm(model, enabled=True):
    """While tracing a step on several TensorFlow replicas, every BatchNormalization layer of
    ``model`` normalises with the statistics of the global batch (TF's ``synchronized``).
    The layers are restored afterwards, so the saved configuration never carries it."""
    layers = []
    if enabled and _tf_replica_context() is not None:
        layers = [layer for layer in model._flatten_layers(include_self=False)
                  if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized]
    for layer in layers:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronized = False


def virtual_cpu_devices(n):
    """Split the CPU into ``n`` TensorFlow devices when there are fewer than ``n`` GPUs, to try a
    strategy on one machine (tests, benchmarks). Call it before TensorFlow starts; JAX gets its
    virtual devices from ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` instead."""
    if BACKEND != "tensorflow":
        raise ValueError(f"virtual_cpu_devices is for TensorFlow; on {BACKEND} set "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=N (JAX) before it starts")
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) < n:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def initialize(coordinator, num_processes, process_id):
    """Join this process to a multi-process JAX job (several hosts, or several processes on one):
    ``keras.distribution.initialize`` with the coordinator's "host:port". Call it before
    anything else touches JAX; then ``Distribution("data_parallel")`` spans every process's
    devices, and each process feeds the same ``tf.data.Dataset`` of global batches (Keras gives
    each its share). On CPU the collectives go through gloo."""
    if BACKEND != "jax":
        raise ValueError(f"Several processes need the JAX backend (KERAS_BACKEND=jax); this is {BACKEND}. "
                         "TensorFlow's MultiWorkerMirroredStrategy is not supported by Keras 3.")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only by CPU devices
    keras.distribution.initialize(coordinator, num_processes=int(num_processes), process_id=int(process_id))


def process_index():
    """This process's index in a multi-process JAX job (0 otherwise): process 0 writes the run."""
    if BACKEND != "jax":
        return 0
    import jax

    return jax.process_index()


def process_count():
    """Processes in the JAX job (1 otherwise)."""
    if BACKEND != "jax":
        return 1
    import jax

    return jax.process_count()


class Distribution:
    """Where a model is built and trained: ``with distribution.scope(): build, compile, fit``.

    ``strategy``: "auto" (all devices of the best kind when there are several, else one; one
    on PyTorch), "mirrored" (TensorFlow), "data_parallel" (JAX), or None (one device).
    ``devices``: device names (TF, e.g. ``["/gpu:0", "/gpu:1"]``) or a count; default all of
    the kind found. More than one on PyTorch is an error.
    """

    def __init__(self, strategy="auto", devices=None):
        if strategy not in STRATEGIES + (None,):
            raise ValueError(f"strategy must be one of {STRATEGIES} or None, got {strategy!r}")
        found = _devices(devices)
        if strategy is None and devices is not None and len(found) > 1:
            raise ValueError(f"{len(found)} devices asked for without a strategy: pass strategy='auto'.")
        if BACKEND == "torch":
            if strategy not in ("auto", None) or (devices is not None and len(found) > 1):
                raise ValueError(
                    f"Keras 3 trains on one device with the PyTorch backend (asked: {strategy!r}, "
                    f"{len(found)} device(s)): use one device, or the same model on KERAS_BACKEND=jax "
                    "(data_parallel) or tensorflow (mirrored), and load its weights here.")
            strategy = None
        elif strategy == "auto":
            strategy = _ENGINE[BACKEND] if len(found) > 1 else None
        elif strategy is not None and strategy != _ENGINE[BACKEND]:
            raise ValueError(f"strategy {strategy!r} needs the "
                             f"{'TensorFlow' if strategy == 'mirrored' else 'JAX'} backend; this is "
                             f"{BACKEND}, whose strategy is {_ENGINE[BACKEND]!r}.")
        self.name, self.devices = strategy, found if strategy else found[:1]
        self.engine = None
        if strategy == "mirrored":
            import tensorflow as tf

            self.engine = tf.distribute.MirroredStrategy(self.devices)
        elif strategy == "data_parallel":
            self.engine = keras.distribution.DataParallel(devices=self.devices)

    @property
    def num_devices(self):
        return len(self.devices)

    def scope(self):
        if self.engine is None:
            return contextlib.nullcontext()
        return self.engine.scope()

    def __repr__(self):
        return f"Distribution({self.name!r}, {self.num_devices} device(s))"


def _devices(devices):
    """Device names of the best kind (GPU/TPU before CPU), or the ones given."""
    if devices is not None and not isinstance(devices, int):
        return list(devices)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        names = []
        for kind in ("TPU", "GPU", "CPU"):
            names = [d.name for d in tf.config.list_logical_devices(kind)]
            if names:
                break
    elif BACKEND == "jax":
        import jax

        names = jax.devices()  # the default backend's, every process's
    else:
        import torch

        names = ([f"cuda:{i}" for i in range(torch.cuda.device_count())]
                 if torch.cuda.is_available() else ["cpu"])
    if isinstance(devices, int):
        if devices > len(names):
            raise ValueError(f"{devices} devices asked for, {len(names)} found: {names}")
        names = names[:devices]
    return list(names)
