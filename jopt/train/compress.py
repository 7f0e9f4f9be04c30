"""Compression in a run: magnitude pruning while training (``--prune``) and dynamic int8
quantization after it (``--quantize``), with what they cost and save.

Pruning acts on the weight matrices (``jopt.prune.matrices``), never the biases, and follows
the configuration's ``prune_schedule``:

- ``oneshot``: train dense for ``epochs // 2`` epochs, prune to ``sparsity`` once (torch's
  ``global_unstructured`` with ``L1Unstructured`` for ``l1``, ``l1_unstructured`` per matrix
  for ``l1-layer``) and fine-tune the rest with the pruned weights held at zero;
- ``gradual``: Zhu & Gupta's cubic ramp from 0 to ``sparsity``, the mask recomputed once per
  epoch from epoch ``epochs // 4`` to ``3 * epochs // 4``, then held.

A sweep (:func:`jopt.train.sweep` with ``pruning=make_pruning(...)``) prunes each of its runs
on its own; :func:`sparsities` measures all of them at once.
"""

from __future__ import annotations

from typing import Any

import jax
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

__all__ = ["compression_report", "dense_epochs", "make_pruning", "sparsities", "with_pruning"]


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


def sparsities(params: Any, where: prune.Where = prune.matrices) -> np.ndarray:
    """The sparsity of each run of a batch (every leaf of ``params`` with a leading axis K):
    ``jopt.prune.sparsity(params_k, where=where)`` of each run ``k``, as a float64 array (K,).

    The leaves are chosen on one run's tree (so ``prune.matrices`` picks its weight matrices,
    not the biases that the run axis makes 2-D) and their zeros counted for all runs at once.
    """
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    if not leaves:
        return np.zeros(0)
    runs = leaves[0].shape[0]
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], x.dtype), params)
    if where is None:
        chosen = [True] * len(leaves)
    else:
        picked = where(one) if callable(where) else where
        chosen = [bool(c) for c in jax.tree.structure(one).flatten_up_to(picked)]
    counted = [x.reshape(runs, -1) for x, c in zip(leaves, chosen) if c]
    total = sum(x.shape[1] for x in counted)
    if not total:
        return np.zeros(runs)
    zeros = sum(np.count_nonzero(x == 0, axis=1) for x in counted)
    return np.asarray(zeros, np.int64) / total


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
