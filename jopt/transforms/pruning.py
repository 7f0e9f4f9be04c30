"""Pruning during training: masks that hold pruned weights at zero, and gradual magnitude pruning.

torch prunes by reparametrizing (``weight = weight_orig * weight_mask``): the gradient reaching
``weight_orig`` is zero at pruned entries and the optimizer runs on ``weight_orig`` unchanged,
its state included. jopt keeps the pruned weights themselves at zero through the update:

- :func:`keep_pruned` (last in a chain) makes every pruned entry exactly ``+0`` after the step
  (its update is ``-p``: zero once the weight is), whatever the optimizer does there;
- :func:`masked_updates` zeroes the updates at pruned entries. First in a chain it is torch's
  gradient of ``weight_orig * mask`` (zero where pruned), which is what clipping by the global
  norm, Muon's orthogonalization and Adafactor's factored moments then see, as in torch.

``chain(masked_updates(mask), optimizer, keep_pruned(mask))`` therefore follows torch's pruned
training on the kept weights. **The optimizer state of pruned entries is kept**, as torch keeps
``weight_orig``'s: it only ever sees zero gradients there (so it decays, and never moves the
weight), a chain cannot reach the state of another transformation, and a mask that is later
relaxed resumes from it as torch's would. (torch's coupled weight decay reads ``weight_orig``,
whose pruned entries keep their old values, so its state there is not zero: that difference
never touches a kept weight.)

:func:`magnitude_pruning` recomputes the mask inside the compiled step every ``frequency``
steps from the weights' magnitudes, at a sparsity that may follow a schedule;
:func:`jopt.gradual_pruning` (:mod:`jopt.optimizers.pruning`) is Zhu & Gupta's recipe with
:func:`jopt.schedules.polynomial_sparsity`.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import EmptyState, GradientTransformation, Schedule, check_tree_match
from jopt.prune import count_to_prune, prune_smallest
from jopt.transforms.common import _increment, _need_params

__all__ = [
    "MagnitudePruningState",
    "keep_pruned",
    "magnitude_pruning",
    "masked_updates",
]

Mask = Any  # a tree of bool arrays like the params (True: kept), or params -> such a tree


def _mask_tree(mask: Mask, params: Any) -> Any:
    tree = mask(params) if callable(mask) else mask
    check_tree_match(tree, params, what="mask", against="parameters")
    return tree


def _zero(u: jax.Array) -> jax.Array:
    return jnp.zeros((), u.dtype)


def masked_updates(mask: Mask) -> GradientTransformation:
    """``u <- where(mask, u, 0)``: nothing flows through pruned entries.

    First in a chain: torch's gradient of a pruned ``weight_orig`` (zero where the mask is).
    Last: pruned weights that are zero stay zero. A select, not a product, so a NaN or an
    infinity at a pruned entry does not leak into the parameters.
    """

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Any, state: EmptyState, params: Any = None) -> tuple[Any, EmptyState]:
        tree = _mask_tree(mask, updates if params is None else params)
        return jax.tree.map(lambda u, m: jnp.where(m, u, _zero(u)), updates, tree), state

    return GradientTransformation(init, update)


def keep_pruned(mask: Mask) -> GradientTransformation:
    """Last in a chain: after the step every pruned weight is exactly ``+0``.

    ``u <- where(mask, u, -p)``: a pruned weight not yet zero is zeroed by this step, one that
    is stays so (``-p == 0``), whatever the optimizer's momentum or weight decay would do.
    torch: the forward of a module pruned by ``torch.nn.utils.prune`` (``orig * mask``).
    """

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Any, state: EmptyState, params: Any = None) -> tuple[Any, EmptyState]:
        params = _need_params(params, "keep_pruned")
        tree = _mask_tree(mask, params)
        return jax.tree.map(_pin, updates, params, tree), state

    return GradientTransformation(init, update)


def _pin(u: jax.Array, p: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.where(m, u, (-p).astype(u.dtype))


class MagnitudePruningState(NamedTuple):
    """The step count and the current mask (``True``: kept), a tree like the parameters."""

    count: jax.Array
    mask: Any


def magnitude_pruning(
    sparsity: float | jax.Array | Schedule,
    frequency: int = 1,
    begin_step: int = 0,
    end_step: int | None = None,
    scope: str = "global",
    where: Mask | None = None,
) -> GradientTransformation:
    """Last in a chain: every ``frequency`` steps from ``begin_step`` to ``end_step``
    (inclusive; for ever when ``None``), turn off the smallest-magnitude weights of the
    selected leaves until ``sparsity`` (a fraction, or a schedule of the step) of them is off;
    in between, hold the pruned weights at zero as :func:`keep_pruned` does.

    The magnitudes are those of the weights after this step's update (``|p + u|``).
    ``scope="global"`` ranks all selected leaves together (torch's ``global_unstructured``
    with ``L1Unstructured``); ``"layer"`` prunes each leaf to the sparsity on its own (Zhu &
    Gupta, torch's ``l1_unstructured`` per tensor). Entries already pruned go first, so a
    growing sparsity only adds to the mask: torch's ``PruningContainer`` pruning the difference
    among the entries left. The count is ``round(sparsity * n)`` (half to even), ties by
    position (see :mod:`jopt.prune`). ``where`` (a tree of bools or a function of the params)
    selects the leaves, every one by default (``jopt.prune.matrices``: the weight matrices).
    The mask is state: it is recomputed inside ``jit``, ``vmap`` and ``lax.scan``.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if frequency < 1:
        raise ValueError(f"frequency should be a positive integer, got {frequency}")
    if isinstance(sparsity, numbers.Real) and not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity should be a float in the range [0, 1], got {sparsity}")

    def selected(params: Any) -> list[bool]:
        if where is None:
            return [True] * len(jax.tree.leaves(params))
        chosen = where(params) if callable(where) else where
        return [bool(s) for s in jax.tree.structure(params).flatten_up_to(chosen)]

    def init(params: Any) -> MagnitudePruningState:
        mask = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
        return MagnitudePruningState(jnp.zeros([], jnp.int32), mask)

    def new_mask(weights: list[jax.Array], old: list[jax.Array], target: Any) -> list[jax.Array]:
        # Pruned entries rank first (score -1), then by magnitude.
        scores = [jnp.where(m, jnp.abs(w), -1) for w, m in zip(weights, old)]
        if scope == "layer":
            return [prune_smallest(s, jnp.ones(s.shape, bool), count_to_prune(target, s.size))
                    for s in scores]
        flat = jnp.concatenate([jnp.ravel(s) for s in scores])
        kept = prune_smallest(flat, jnp.ones(flat.shape, bool),
                              count_to_prune(target, flat.size))
        out, start = [], 0
        for s in scores:
            out.append(kept[start:start + s.size].reshape(s.shape))
            start += s.size
        return out

    def update(
        updates: Any, state: MagnitudePruningState, params: Any = None
    ) -> tuple[Any, MagnitudePruningState]:
        params = _need_params(params, "magnitude_pruning")
        check_tree_match(updates, params, what="updates")
        treedef = jax.tree.structure(params)
        us, ps = treedef.flatten_up_to(updates), treedef.flatten_up_to(params)
        masks = treedef.flatten_up_to(state.mask)
        chosen = [i for i, s in enumerate(selected(params)) if s]
        step = state.count
        due = (step >= begin_step) & ((step - begin_step) % frequency == 0)
        if end_step is not None:
            due = due & (step <= end_step)
        if chosen:
            target = sparsity(step) if callable(sparsity) else sparsity
            after = [(ps[i] + us[i]).astype(jnp.promote_types(ps[i].dtype, us[i].dtype))
                     for i in chosen]
            fresh = new_mask(after, [masks[i] for i in chosen], target)
            for i, m in zip(chosen, fresh):
                masks[i] = jnp.where(due, m, masks[i])
        new_updates = [_pin(u, p, m) for u, p, m in zip(us, ps, masks)]
        return (treedef.unflatten(new_updates),
                MagnitudePruningState(_increment(step), treedef.unflatten(masks)))

    return GradientTransformation(init, update)
