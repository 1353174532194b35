"""Checkpoints in the exact layout of the authors' weights.zip, written from tests/torch_reference.

``torch.save({"pretext", "model", "optimizer", "loss_fn", "epoch", "gin_info", "val_loss"})``
(docs/paper.md#checkpoints, ``utils/gin.py::get_save_dict``). Encoder keys per method:

- contrastive, barlow_twins, feature_stats: ``module.backbone.*`` + projector
  ``module.head.ops.N.*``;
- byol, clustering: ``student.module.backbone.*`` / ``student.module.head.ops.N.*`` and the EMA
  teacher (not DDP-wrapped) ``teacher.backbone.*`` / ``teacher.head.ops.N.*``; byol adds its
  predictor ``projector.ops.N.*``.
"""

import numpy as np
import torch
from torch import nn

from torch_reference import Backbone, randomize_batchnorm

METHODS = ("contrastive", "barlow_twins", "feature_stats", "byol", "clustering")
STUDENT_PREFIX = {"contrastive": "module.", "barlow_twins": "module.", "feature_stats": "module.",
                  "byol": "student.module.", "clustering": "student.module."}


def reference_backbone(config, seed):
    torch.manual_seed(seed)
    return randomize_batchnorm(Backbone(**config), seed).eval()


def _head(in_dim, dims):
    """The authors' Head: [Linear(no bias), BatchNorm1d, ReLU]* + Linear(no bias)."""
    ops = []
    for dim in dims[:-1]:
        ops += [nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU()]
        in_dim = dim
    ops.append(nn.Linear(in_dim, dims[-1], bias=False))
    module = nn.Module()
    module.ops = nn.ModuleList(ops)
    return module


def _prefixed(prefix, module):
    return {prefix + key: value for key, value in module.state_dict().items()}


def released_state_dict(method, student, teacher=None):
    """The ``model`` entry of a released checkpoint for ``method`` (encoder + heads)."""
    out_dim = student.embedding.attnpool.c_proj.out_features
    head = _head(out_dim, [16, 24])
    prefix = STUDENT_PREFIX[method]
    state = {**_prefixed(prefix + "backbone.", student), **_prefixed(prefix + "head.", head)}
    if method in ("byol", "clustering"):
        teacher = teacher or student
        state.update(_prefixed("teacher.backbone.", teacher))
        state.update(_prefixed("teacher.head.", _head(out_dim, [16, 24])))
    if method == "byol":
        state.update(_prefixed("projector.", _head(24, [8, 24])))
    return state


def write_released_checkpoint(path, method, student, teacher=None, numpy_scalars=False, **extra):
    """torch.save a checkpoint as the authors' training code does; returns the saved dict.

    ``numpy_scalars`` stores ``val_loss`` and the optimizer's learning rate as numpy floats,
    as a numpy learning-rate schedule and ``np.Inf`` in the authors' schema can produce.
    """
    model = released_state_dict(method, student, teacher)
    probe = nn.Linear(4, 2)  # a real optimizer state (Adam moments after one step)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    probe(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    opt_state = optimizer.state_dict()
    val_loss = 4.25
    if numpy_scalars:
        opt_state["param_groups"][0]["lr"] = np.float64(2.5e-4)
        val_loss = np.float64(val_loss)
    checkpoint = {
        "pretext": method,
        "model": model,
        "optimizer": opt_state,
        "loss_fn": {"center": torch.zeros(1, 24)} if method == "clustering" else None,
        "epoch": 37,
        "gin_info": ["import ssl_framework.models", f"train.pretext = '{method}'",
                     "Backbone.feature_dim = 1024"],
        "val_loss": val_loss,
        **extra,
    }
    torch.save(checkpoint, path)
    return checkpoint
