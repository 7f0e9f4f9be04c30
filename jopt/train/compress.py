"""Compression in a run: magnitude pruning while training (``--prune``) and dynamic int8
quantization after it (``--quantize``), with what they cost and save.

Pruning acts on the weight matrices (``jopt.prune.matrices``), never the biases, and follows
the configuration's ``prune_schedule``:

- ``oneshot``: train dense for ``epochs // 2`` epochs, prune to ``sparsity`` once (torch's
  ``global_unstructured`` with ``L1Unstructured`` for ``l1``, ``l1_unstructured`` per matrix
  for ``l1-layer``) and fine-tune the rest with the pruned weights held at zero;
- ``gradual``: Zhu & Gupta's cubic ramp from 0 to ``sparsity``, the mask recomputed once per
  epoch from epoch ``epochs // 4`` to ``3 * epochs // 4``, then held.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from jopt import prune
from jopt.core import GradientTransformation, chain
from jopt.optimizers.pruning import gradual_pruning
from jopt.train.config import RunConfig
from jopt.train.data import Dataset
from jopt.train.model import merge_params
from jopt.train.quantize import model_bytes, quantize_dynamic
from jopt.transforms.pruning import magnitude_pruning

__all__ = ["compression_report", "dense_epochs", "make_pruning", "with_pruning"]


def dense_epochs(config: RunConfig) -> int | None:
    """The epochs trained before the first mask (``None`` without ``--prune``)."""
    if config.prune == "none":
        return None
    return config.epochs // 2 if config.prune_schedule == "oneshot" else config.epochs // 4


def make_pruning(config: RunConfig, steps_per_epoch: int) -> GradientTransformation | None:
    """The pruning transformation of ``config`` (``None`` without ``--prune``)."""
    c = config.resolved()
    if c.prune == "none":
        return None
    scope = "global" if c.prune == "l1" else "layer"
    first = dense_epochs(c)
    if c.prune_schedule == "oneshot":
        step = first * steps_per_epoch
        return magnitude_pruning(c.sparsity, 1, step, step, scope, prune.matrices)
    last = (3 * c.epochs) // 4
    return gradual_pruning(c.sparsity, max(1, last - first), steps_per_epoch,
                           first * steps_per_epoch, scope=scope, where=prune.matrices)


def with_pruning(optimizer: GradientTransformation, config: RunConfig,
                 steps_per_epoch: int) -> GradientTransformation:
    """``optimizer``, followed by ``config``'s pruning if it has one."""
    pruning = make_pruning(config, steps_per_epoch)
    return optimizer if pruning is None else chain(optimizer, pruning)


def _accuracy(model: nnx.Module, data: Dataset) -> float:
    logits = np.asarray(model(data.x_test))
    return float(np.mean(np.argmax(logits, -1) == np.asarray(data.y_test)))


def compression_report(graphdef: nnx.GraphDef, params: Any, data: Dataset,
                       quantize: str = "none", dense_accuracy: float | None = None
                       ) -> dict[str, Any]:
    """The trained model's sparsity (of its weight matrices), bytes and test accuracy; with
    ``quantize="int8"``, the same of its :func:`~jopt.train.quantize.quantize_dynamic` copy
    (``None`` otherwise). ``dense_accuracy`` (the test accuracy before pruning) is passed
    through."""
    model = merge_params(graphdef, params)
    report: dict[str, Any] = {
        "dense_test_accuracy": dense_accuracy,
        "sparsity": prune.sparsity(params, where=prune.matrices),
        "model_bytes": model_bytes(model),
        "float_test_accuracy": _accuracy(model, data),
        "quantized_model_bytes": None,
        "quantized_test_accuracy": None,
    }
    if quantize == "int8":
        quantized = quantize_dynamic(model)
        report["quantized_model_bytes"] = model_bytes(quantized)
        report["quantized_test_accuracy"] = _accuracy(quantized, data)
    return report
