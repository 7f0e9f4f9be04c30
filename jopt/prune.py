"""Pruning masks chosen by ``torch.nn.utils.prune``'s rules, on arrays, pytrees and nnx modules.

torch reparametrizes a module (``weight_orig`` and a ``weight_mask`` buffer, with ``weight =
weight_orig * weight_mask`` recomputed before every forward). jopt keeps the mask beside the
parameters instead, as a tree of booleans (``True``: kept), like an optimizer state: every
method here takes an array, a pytree of arrays or an ``nnx.Module`` (its ``nnx.Param`` leaves,
as the pure dict :func:`jopt.train.split_params` gives) and returns the new mask in that
structure. :func:`apply_mask` multiplies it in; :func:`remove` is torch's ``prune.remove``
(the pruned values become the parameter, the mask is no longer needed); during training
``jopt.keep_pruned(mask)`` keeps the pruned entries at exactly zero.

The rules are torch's:

- ``amount`` is a fraction in [0, 1] (``round(amount * n)`` entries, Python's rounding, half to
  even) or a count, checked with torch's messages and exception types;
- ``mask=`` continues a pruning as torch's ``PruningContainer`` does: the new amount applies
  to the entries (unstructured) or channels (structured: those not entirely pruned) still
  kept, and the new mask is the old one with more entries off;
- the scores are the masked weights (``w * mask``, torch's ``getattr(module, name)``), or
  ``importance_scores`` when given.

Ties are broken by position: among entries (or channels) of equal score, the one with the
lower index in row-major order is pruned first. torch's ``topk`` documents no order for ties
(on CPU it depends on the tensor's size), so on tied weights the two may prune different,
equally valid entries; the number pruned is always the same.

``random_unstructured`` and ``random_structured`` draw from a JAX PRNG ``key``: their choice
follows torch's distribution (``amount`` entries or channels uniformly among those kept) but
cannot equal torch's, which draws from torch's generator.

Every method also runs under ``jit`` (a traced mask or ``amount``): the counts are then traced
and torch's check of an integer ``amount`` against the entries left is skipped.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.core import is_concrete

__all__ = [
    "apply_mask",
    "global_unstructured",
    "identity",
    "l1_unstructured",
    "ln_structured",
    "matrices",
    "ones_like",
    "random_structured",
    "random_unstructured",
    "remove",
    "sparsity",
]

Where = Any  # None (every leaf), a tree of bools like the params, or params -> such a tree


# --------------------------------------------------------------------------------------------
# torch's checks and counts
# --------------------------------------------------------------------------------------------


def _validate_amount_init(amount: Any) -> None:
    """torch's ``_validate_pruning_amount_init``."""
    if not is_concrete(amount) or isinstance(amount, jax.Array) and amount.ndim == 0:
        return  # data: checked by the caller's program, not here
    if not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount}. Must be int or float.")
    if (isinstance(amount, numbers.Integral) and amount < 0) or (
        not isinstance(amount, numbers.Integral) and (float(amount) > 1.0 or float(amount) < 0.0)
    ):
        raise ValueError(
            f"amount={amount} should either be a float in the range [0, 1] or a non-negative "
            "integer"
        )


def count_to_prune(amount: Any, size: Any) -> Any:
    """torch's ``_compute_nparams_toprune`` and ``_validate_pruning_amount``: ``amount`` itself
    if an integer (at most ``size``), else ``round(amount * size)`` (half to even). Python
    numbers give a Python int, traced ones an int32 array (an integer over a traced ``size``
    is not checked: the entries left are all pruned)."""
    if isinstance(amount, numbers.Integral):
        if isinstance(size, numbers.Integral) and amount > size:
            raise ValueError(
                f"amount={amount} should be smaller than the number of parameters to "
                f"prune={size}"
            )
        return int(amount)
    if isinstance(amount, numbers.Real) and isinstance(size, numbers.Integral):
        return round(float(amount) * size)
    return jnp.round(jnp.asarray(amount, jnp.result_type(float)) * size).astype(jnp.int32)


def _concrete_int(x: jax.Array) -> Any:
    """A Python int for a known count, the traced count otherwise."""
    return int(x) if is_concrete(x) else x


def _validate_structured(t: Any, dim: int) -> int:
    """torch's ``_validate_structured_pruning`` and ``_validate_pruning_dim``; the axis."""
    shape = tuple(jnp.shape(t))
    if len(shape) <= 1:
        raise ValueError(
            "Structured pruning can only be applied to multidimensional tensors. Found tensor "
            f"of shape {shape} with {len(shape)} dims"
        )
    if dim >= len(shape) or dim < -len(shape):
        raise IndexError(f"Invalid index {dim} for tensor of size {shape}")
    return dim % len(shape)


# --------------------------------------------------------------------------------------------
# The one selection rule
# --------------------------------------------------------------------------------------------


def prune_smallest(scores: jax.Array, kept: jax.Array, count: Any) -> jax.Array:
    """``kept`` with its ``count`` entries of smallest ``scores`` turned off.

    Only entries still kept compete; among equal scores the lower (row-major) index goes first.
    One stable sort, so ``count`` may be traced.
    """
    shape = jnp.shape(scores)
    flat, alive = jnp.ravel(scores), jnp.ravel(kept).astype(bool)
    n = flat.shape[0]
    if n == 0:
        return jnp.asarray(kept, bool)
    order = jnp.arange(n, dtype=jnp.int32)
    _, _, perm = jax.lax.sort(
        ((~alive).astype(jnp.int32), flat, order), num_keys=2, is_stable=True
    )
    dropped = jnp.zeros(n, bool).at[perm].set(order < count)
    return (alive & ~dropped).reshape(shape)


def _unstructured(scores: jax.Array, kept: jax.Array, amount: Any) -> jax.Array:
    alive = _concrete_int(jnp.sum(kept))
    return prune_smallest(scores, kept, count_to_prune(amount, alive))


def _norm(x: jax.Array, n: Any, axes: tuple[int, ...]) -> jax.Array:
    """``torch.norm(x, p=n, dim=axes)``: a vector norm of every channel, or ``'fro'`` and
    ``'nuc'`` (the latter over exactly two axes, as torch requires)."""
    a = jnp.abs(x)
    if n == "fro":
        return jnp.sqrt(jnp.sum(a * a, axis=axes))
    if n == "nuc":
        if len(axes) != 2:
            raise ValueError(f"linalg.matrix_norm: dim must be a 2-tuple. Got {len(axes)}")
        return jnp.linalg.norm(x, "nuc", axis=axes)
    if not isinstance(n, numbers.Real):
        raise ValueError(f"unsupported norm order {n!r}: a number, inf, -inf, 'fro' or 'nuc'")
    if n == np.inf:
        return jnp.max(a, axis=axes)
    if n == -np.inf:
        return jnp.min(a, axis=axes)
    if n == 0:
        return jnp.sum(a != 0, axis=axes).astype(a.dtype)
    if n == 1:
        return jnp.sum(a, axis=axes)
    if n == 2:
        return jnp.sqrt(jnp.sum(a * a, axis=axes))
    return jnp.sum(a**n, axis=axes) ** (1.0 / n)


def _structured(
    kept: jax.Array, dim: int, amount: Any, channel_scores: Callable[[tuple[int, ...]], Any]
) -> jax.Array:
    axis = _validate_structured(kept, dim)
    others = tuple(i for i in range(kept.ndim) if i != axis)
    alive = jnp.any(kept, axis=others)  # torch: mask.sum(other dims) != 0
    count = count_to_prune(amount, _concrete_int(jnp.sum(alive)))
    channels = prune_smallest(channel_scores(others), alive, count)
    return kept & jnp.expand_dims(channels, others)


# --------------------------------------------------------------------------------------------
# Arrays, pytrees, modules
# --------------------------------------------------------------------------------------------


def _is_module(x: Any) -> bool:
    """An ``nnx.Module`` (flax is not imported for that: without it there are none)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Module)


def _as_tree(x: Any) -> Any:
    """An ``nnx.Module``'s parameters as a pure dict; anything else as it is."""
    if _is_module(x):
        from flax import nnx

        return nnx.to_pure_dict(nnx.state(x, nnx.Param))
    return x


def ones_like(x: Any) -> Any:
    """The mask that prunes nothing: ``True`` for every entry of ``x`` (torch's first
    ``default_mask``)."""
    return jax.tree.map(lambda leaf: jnp.ones(jnp.shape(leaf), bool), _as_tree(x))


def matrices(params: Any) -> Any:
    """``True`` at the leaves with two or more dimensions (weights, not biases): a ``where=``."""
    return jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, _as_tree(params))


def _selected(where: Where, tree: Any) -> list[bool]:
    if where is None:
        return [True] * len(jax.tree.leaves(tree))
    chosen = where(tree) if callable(where) else where
    return [bool(s) for s in jax.tree.structure(tree).flatten_up_to(chosen)]


def _leafwise(
    x: Any,
    mask: Any,
    where: Where,
    importance_scores: Any,
    rule: Callable[[jax.Array, jax.Array, int], jax.Array],
) -> Any:
    """``rule(scores, kept, index)`` on every selected leaf; the others keep their mask."""
    tree = _as_tree(x)
    treedef = jax.tree.structure(tree)
    leaves = treedef.flatten_up_to(tree)
    masks = treedef.flatten_up_to(ones_like(tree) if mask is None else _as_tree(mask))
    scores = None if importance_scores is None else treedef.flatten_up_to(
        _as_tree(importance_scores))
    out = []
    for i, (leaf, kept, chosen) in enumerate(zip(leaves, masks, _selected(where, tree))):
        kept = jnp.asarray(kept, bool)
        if not chosen:
            out.append(kept)
            continue
        score = jnp.where(kept, leaf, 0) if scores is None else jnp.asarray(scores[i])
        if jnp.shape(score) != jnp.shape(leaf):
            raise AssertionError(f"importance_scores should have the same shape as tensor t, "
                                 f"got {jnp.shape(score)} vs {jnp.shape(leaf)}")
        out.append(rule(score, kept, i))
    return treedef.unflatten(out)


def identity(x: Any, *, mask: Any = None, where: Where = None) -> Any:
    """The mask unchanged (all ``True`` without one): torch's ``prune.identity``."""
    return _leafwise(x, mask, where, None, lambda s, kept, i: kept)


def l1_unstructured(
    x: Any, amount: int | float, *, mask: Any = None, importance_scores: Any = None,
    where: Where = None,
) -> Any:
    """Turn off the ``amount`` kept entries of smallest ``|w|`` in each selected leaf.

    torch's ``prune.l1_unstructured(module, name, amount, importance_scores)``.
    """
    _validate_amount_init(amount)
    return _leafwise(x, mask, where, importance_scores,
                     lambda s, kept, i: _unstructured(jnp.abs(s), kept, amount))


def random_unstructured(
    x: Any, amount: int | float, *, key: jax.Array, mask: Any = None, where: Where = None
) -> Any:
    """Turn off ``amount`` kept entries chosen uniformly at random in each selected leaf
    (leaf ``i`` draws from ``fold_in(key, i)``). torch's ``prune.random_unstructured``: the
    same distribution, not the same draw (torch uses its own generator)."""
    _validate_amount_init(amount)

    def rule(s: jax.Array, kept: jax.Array, i: int) -> jax.Array:
        u = jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(s))
        return _unstructured(u, kept, amount)

    return _leafwise(x, mask, where, None, rule)


def ln_structured(
    x: Any, amount: int | float, n: Any, dim: int, *, mask: Any = None,
    importance_scores: Any = None, where: Where = None,
) -> Any:
    """Turn off the ``amount`` kept channels along ``dim`` of smallest L``n`` norm (``n``: a
    number, ``inf``, ``-inf``, ``'fro'``, ``'nuc'``, as torch.norm's ``p``).

    torch's ``prune.ln_structured(module, name, amount, n, dim)``. A channel is kept while any
    of its entries is; ``amount`` counts among those. An nnx ``Linear`` kernel is ``(in, out)``,
    the transpose of torch's ``weight``: torch's ``dim=0`` (output units) is jopt's ``dim=-1``.
    """
    _validate_amount_init(amount)

    def rule(s: jax.Array, kept: jax.Array, i: int) -> jax.Array:
        return _structured(kept, dim, amount, lambda axes: _norm(s, n, axes))

    return _leafwise(x, mask, where, importance_scores, rule)


def random_structured(
    x: Any, amount: int | float, dim: int = -1, *, key: jax.Array, mask: Any = None,
    where: Where = None,
) -> Any:
    """Turn off ``amount`` kept channels along ``dim`` chosen uniformly at random: torch's
    ``prune.random_structured`` (the same distribution, not the same draw)."""
    _validate_amount_init(amount)

    def rule(s: jax.Array, kept: jax.Array, i: int) -> jax.Array:
        axis = _validate_structured(s, dim)
        draw = jax.random.uniform(jax.random.fold_in(key, i), (jnp.shape(s)[axis],))
        return _structured(kept, dim, amount, lambda axes: draw)

    return _leafwise(x, mask, where, None, rule)


_UNSTRUCTURED = {"l1": l1_unstructured, "random": random_unstructured, "identity": identity}


def global_unstructured(
    x: Any, pruning_method: str | Callable[..., Any] = "l1", *, amount: int | float = 0.0,
    key: jax.Array | None = None, mask: Any = None, importance_scores: Any = None,
    where: Where = None,
) -> Any:
    """Prune the selected leaves as one vector: ``amount`` counts over all of their kept
    entries, so layers of small weights lose more than others.

    torch's ``prune.global_unstructured(parameters, pruning_method, importance_scores,
    amount=...)``; ``pruning_method`` is ``"l1"``, ``"random"`` (with ``key``), ``"identity"``
    or one of :func:`l1_unstructured`, :func:`random_unstructured`, :func:`identity`.
    """
    methods = {**_UNSTRUCTURED, **{f: f for f in _UNSTRUCTURED.values()}}
    if pruning_method not in methods:
        raise TypeError(
            'Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. Found method '
            f"{pruning_method} of type structured"
            if pruning_method in (ln_structured, random_structured)
            else f"unknown pruning_method {pruning_method!r}; choose from l1, random, identity"
        )
    method = methods[pruning_method]
    method = method if callable(method) else _UNSTRUCTURED[method]
    if method is not identity:
        _validate_amount_init(amount)
    if method is random_unstructured and key is None:
        raise TypeError("random pruning needs a PRNG key: key=jax.random.key(...)")
    tree = _as_tree(x)
    treedef = jax.tree.structure(tree)
    leaves = treedef.flatten_up_to(tree)
    masks = [jnp.asarray(m, bool) for m in treedef.flatten_up_to(
        ones_like(tree) if mask is None else _as_tree(mask))]
    chosen = [i for i, s in enumerate(_selected(where, tree)) if s]
    if importance_scores is None:
        scores = [jnp.where(masks[i], leaves[i], 0) for i in chosen]
    else:
        scores = [jnp.asarray(s) for s in treedef.flatten_up_to(_as_tree(importance_scores))]
        scores = [scores[i] for i in chosen]
    vector = jnp.concatenate([jnp.ravel(s) for s in scores]) if chosen else jnp.zeros(0)
    kept = jnp.concatenate([jnp.ravel(masks[i]) for i in chosen]) if chosen else jnp.zeros(0, bool)
    if method is identity:
        new = kept
    elif method is l1_unstructured:
        new = _unstructured(jnp.abs(vector), kept, amount)
    else:
        new = _unstructured(jax.random.uniform(key, vector.shape), kept, amount)
    out, start = list(masks), 0
    for i in chosen:
        size = int(np.prod(jnp.shape(leaves[i]), dtype=np.int64))
        out[i] = new[start:start + size].reshape(jnp.shape(leaves[i]))
        start += size
    return treedef.unflatten(out)


# --------------------------------------------------------------------------------------------
# Applying masks
# --------------------------------------------------------------------------------------------


def apply_mask(x: Any, mask: Any) -> Any:
    """``x`` with its pruned entries set to zero (torch's ``apply_mask``: ``orig * mask``).

    An array or pytree gives a new one; an ``nnx.Module`` is changed in place and returned, as
    torch's functions return the module they pruned. NaN and infinities at pruned entries
    become zeros too (a select, not a product).
    """
    tree = _as_tree(x)
    pruned = jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros((), jnp.result_type(w))),
                          tree, _as_tree(mask))
    if _is_module(x):
        from flax import nnx

        state = nnx.state(x, nnx.Param)
        nnx.replace_by_pure_dict(state, pruned)
        nnx.update(x, state)
        return x
    return pruned


def remove(x: Any, mask: Any) -> Any:
    """torch's ``prune.remove``: make the pruning permanent, after which the mask is not needed.

    jopt has no ``weight_orig``: this is :func:`apply_mask`. Pruned entries stay zero in
    training only under ``jopt.keep_pruned(mask)`` (as in torch, where a removed mask no longer
    holds them at zero).
    """
    return apply_mask(x, mask)


def sparsity(x: Any, where: Where = None) -> float:
    """The fraction of exactly-zero entries over the selected leaves (all by default)."""
    tree = _as_tree(x)
    leaves = [leaf for leaf, s in zip(jax.tree.leaves(tree), _selected(where, tree)) if s]
    total = sum(int(np.size(leaf)) for leaf in leaves)
    zeros = sum(int(jnp.sum(jnp.asarray(leaf) == 0)) for leaf in leaves)
    return zeros / total if total else 0.0
