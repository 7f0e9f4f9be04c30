"""Pruning the parameters of a :class:`jopt.optim.Optimizer`: ``torch.nn.utils.prune`` as the
optimizer sees it.

torch prunes a module by reparametrizing it: ``weight = weight_orig * weight_mask`` before each
forward, so the loss sees zeros at the pruned entries, ``weight_orig.grad`` is zero there, and
the optimizer keeps stepping ``weight_orig`` with its state. JAX arrays have no forward hooks,
so :meth:`Pruning.prune` gives the mask to the optimizer instead: the pruned entries are
zeroed at once, every gradient is masked (torch's gradient of ``weight_orig``), and each group's
rule runs between ``jopt.masked_updates`` and ``jopt.keep_pruned`` of its mask, so pruned
parameters stay exactly zero and the kept ones follow torch's pruned training.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jopt.flat import Flat
from jopt.optim.group import Group
from jopt.prune import apply_mask

__all__ = ["Pruning"]


class Pruning:
    """The pruning half of :class:`~jopt.optim.Optimizer` (a mixin: it reads the groups)."""

    def prune(self, mask: Any) -> None:
        """Hold the parameters at zero where ``mask`` is ``False``, from now on.

        ``mask`` has the structure of :attr:`params` (for an optimizer over a module, also the
        pure dict :mod:`jopt.prune` returns), its leaves booleans (``True``: kept) or torch's
        0/1 ``weight_mask``; with several groups, a list with a mask or ``None`` per group.
        ``None`` removes the mask (torch's ``prune.remove``: the values stay, nothing holds
        them any more). As torch's pruned module: the pruned entries are zero from now on, the
        gradients (:attr:`grads` and those given to :meth:`step`) are masked, and the optimizer
        state of pruned entries is kept, as torch keeps ``weight_orig``'s (it only sees zero
        gradients there). A new mask is data: pruning again costs no compilation, and
        continues from :attr:`mask` as torch's ``PruningContainer`` does when given
        ``mask=opt.mask``. The mask is not part of :meth:`state_dict`, as torch's lives in the
        module: prune again after loading.

        One difference: the pruned entries here are zero, where torch's ``weight_orig`` keeps
        its old values there. No update rule reads them but Adafactor's, whose step size
        scales by the parameter's RMS (torch's: ``weight_orig``'s, pruned values included).
        """
        groups: list[Group] = self._groups
        if mask is None:
            trees: list[Any] = [None] * len(groups)
        else:
            trees = list(mask) if self._grouped else [mask]
            if len(trees) != len(groups):
                raise ValueError(
                    f"expected a mask for {len(groups)} parameter groups, got {len(trees)}"
                )
        flats = [None if t is None else self._flat_mask(g, t) for g, t in zip(groups, trees)]
        for g, flat in zip(groups, flats):  # every mask checked: now change
            g.mask = flat
        self._zero_pruned()

    @property
    def mask(self) -> Any:
        """The mask of :meth:`prune` in the structure of :attr:`params` (a module's as a pure
        dict, as :mod:`jopt.prune` gives it); ``None`` where a group has none."""
        views = []
        for g in self._groups:
            if g.mask is None:
                views.append(None)
                continue
            view = g.source.view(g.layout.unflatten_leaves(g.mask))
            views.append(nnx.to_pure_dict(view) if g.source.kind == "module" else view)
        return self._as_given(views)

    def _flat_mask(self, g: Group, tree: Any) -> Flat:
        """A group's mask as its flat buffers of booleans, each where its parameters live."""
        leaves = [jnp.asarray(m) for m in g.unview(tree, "mask")]
        leaves = [m if m.dtype == bool else m != 0 for m in leaves]
        flat = g.layout.flatten_leaves(leaves, bool)
        for bucket in g.layout.shaped:  # a sharded parameter's mask is sharded as it is
            if g.flat is not None:
                flat[bucket] = jax.device_put(flat[bucket], g.flat[bucket].sharding)
            else:
                index = next(i for i, s in enumerate(g.layout.slots) if s.bucket == bucket)
                flat[bucket] = jax.device_put(flat[bucket], self._values(g)[index].sharding)
        return flat

    def _zero_pruned(self) -> None:
        """Set every pruned parameter to zero (torch: ``weight = weight_orig * weight_mask``)."""
        flats, leaves = self._flats(), self._leaf_params()
        for i, g in enumerate(self._groups):
            if g.mask is None:
                continue
            if g.flat is not None:
                flats[i] = apply_mask(g.flat, g.mask)
            else:
                leaves[i] = apply_mask(leaves[i], g.layout.unflatten_leaves(g.mask))
        self._store(flats, leaves, [g.state for g in self._groups])
