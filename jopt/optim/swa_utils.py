"""``torch.optim.swa_utils`` for nnx modules and pytrees: ``AveragedModel``, ``SWALR``,
``update_bn`` and torch's four averaging-rule factories.

``AveragedModel(model)`` holds an independent copy of ``model`` (``self.module``) and the
running average of its parameters; ``update_parameters(model)`` is one jitted call over all
leaves of :func:`jopt.weight_average`'s rule, the same function a jitted train step uses
(:mod:`jopt.transforms.weight_averaging`). ``SWALR`` anneals each group's rate to its
``swa_lr`` through ``optimizer.param_groups``, like the schedulers of
:mod:`jopt.optim.lr_scheduler`. ``update_bn`` recomputes ``nnx.BatchNorm`` statistics over a
loader with torch's cumulative average and unbiased variance.

What counts as a *buffer* (torch's non-parameter module state) in nnx: every Variable that is
not an ``nnx.Param`` and not random-number state (``nnx.RngState``: keys and counters have no
counterpart among torch's buffers and no meaningful average), e.g. BatchNorm's
``nnx.BatchStat`` ``mean`` and ``var``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jopt.core import check_tree_match
from jopt.optim.lr_scheduler.base import LRScheduler, _per_group
from jopt.transforms.weight_averaging import (
    AvgFn,
    MultiAvgFn,
    WeightAverageState,
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
    weight_average,
)

__all__ = [
    "SWALR",
    "AveragedModel",
    "AveragingCount",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "update_bn",
]

Device = jax.Device | jax.sharding.Sharding


class AveragingCount(nnx.Variable):
    """The number of models an :class:`AveragedModel` holds: torch's ``n_averaged`` buffer."""


def _is_buffer(var: nnx.Variable) -> bool:
    return not isinstance(var, nnx.Param | nnx.RngState | AveragingCount)


def _variables(module: nnx.Module, keep: Callable[[nnx.Variable], bool]) -> dict[str, Any]:
    """The module's Variables that ``keep`` accepts, by path, each once, in graph order."""
    found: dict[str, nnx.Variable] = {}
    seen: set[int] = set()
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable) and id(node) not in seen and keep(node):
            seen.add(id(node))
            found[".".join(str(p) for p in path)] = node
    return found


def _matched(
    averaged: dict[str, nnx.Variable], model: dict[str, nnx.Variable], what: str
) -> list[nnx.Variable]:
    """``model``'s Variables in the order of ``averaged``'s, checked path by path."""
    check_tree_match(
        {k: v.get_value() for k, v in model.items()},
        {k: v.get_value() for k, v in averaged.items()},
        what=f"model's {what}",
        against=f"averaged model's {what}",
    )
    return [model[k] for k in averaged]


@jax.jit
def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


@functools.lru_cache(maxsize=64)
def _averager(avg_fn: AvgFn | None, multi_avg_fn: MultiAvgFn | None) -> Callable:
    """One jitted program per rule: the averaged leaves (donated) and the model's, the buffers
    to copy, ``n_averaged`` -> new averages, copied buffers, ``n_averaged + 1``."""
    averaging = weight_average(avg_fn, multi_avg_fn)

    def run(averaged: list, current: list, copies: list, n: jax.Array) -> tuple:
        state = averaging.update(current, WeightAverageState(averaged, n))
        return state.params, [jnp.copy(c) for c in copies], state.n_averaged

    return jax.jit(run, donate_argnums=(0,))


class AveragedModel(nnx.Module):
    """torch's ``AveragedModel``: a copy of ``model`` whose parameters are a running average.

    ``model`` is an ``nnx.Module`` (or a pytree of arrays, whose every leaf is a parameter).
    ``self.module`` is an independent copy of it (new Variables and new arrays, placed on
    ``device`` if given); ``n_averaged`` (an :class:`AveragingCount` Variable) counts the
    updates. :meth:`update_parameters` copies the model's parameters at the first call and
    afterwards applies ``avg_fn(averaged, current, n_averaged)`` to each one,
    ``multi_avg_fn(averaged_list, current_list, n_averaged)`` to those of each dtype, or, with
    neither, the equal-weight SWA mean ``avg + (p - avg) / (n + 1)`` (torch's CPU rule; on GPU
    torch uses the same mean written as a ``lerp``, equal up to rounding). jopt's
    ``multi_avg_fn`` *returns* the new list (JAX arrays are immutable); the factories of this
    module (``get_ema_multi_avg_fn`` ...) do.

    ``use_buffers=True`` averages the buffers too (BatchNorm's ``nnx.BatchStat`` ``mean`` and
    ``var``); otherwise, as torch, the buffers are copied from ``model`` at every update. The
    update is one jitted call over all leaves; the averaged module's previous arrays are
    donated to it (updated in place), so do not hold on to them.

    ``AveragedModel`` is an ``nnx.Module``: ``swa_model(x)`` runs the averaged module, and
    ``nnx.state(swa_model)`` is what to checkpoint (``avg_fn`` is not state, as in torch).
    """

    def __init__(
        self,
        model: nnx.Module | Any,
        device: Device | None = None,
        avg_fn: AvgFn | None = None,
        multi_avg_fn: MultiAvgFn | None = None,
        use_buffers: bool = False,
    ) -> None:
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        if isinstance(model, nnx.Module):
            graphdef, state = nnx.split(model)
            state = _copy(state)
            if device is not None:
                state = jax.device_put(state, device)
            self.module = nnx.merge(graphdef, state)
        else:
            tree = _copy(model)
            self.module = nnx.data(tree if device is None else jax.device_put(tree, device))
        self.n_averaged = AveragingCount(jnp.zeros([], jnp.int32))
        self.device = device
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The averaged module's forward pass (torch's ``forward``)."""
        return self.module(*args, **kwargs)

    def update_parameters(self, model: nnx.Module | Any) -> None:
        """Average ``model``'s parameters (and buffers, with ``use_buffers``) into ``self``."""
        program = _averager(self.avg_fn, self.multi_avg_fn)
        n = self.n_averaged.get_value()
        if not isinstance(self.module, nnx.Module):
            check_tree_match(model, self.module, what="parameters", against="averaged parameters")
            leaves, treedef = jax.tree.flatten(self.module)
            current = self._placed(treedef.flatten_up_to(model))
            new, _, n = program(leaves, current, [], n)
            self.module = treedef.unflatten(new)
            self.n_averaged.set_value(n)
            return
        keep = (
            (lambda v: isinstance(v, nnx.Param) or _is_buffer(v))
            if self.use_buffers
            else (lambda v: isinstance(v, nnx.Param))
        )
        averaged = _variables(self.module, keep)
        sources = _matched(averaged, _variables(model, keep), "parameters")
        targets = list(averaged.values())
        copied: list[nnx.Variable] = []
        copy_sources: list[nnx.Variable] = []
        if not self.use_buffers:
            buffers = _variables(self.module, _is_buffer)
            copy_sources = _matched(buffers, _variables(model, _is_buffer), "buffers")
            copied = list(buffers.values())
        new, copies, n = program(
            [v.get_value() for v in targets],
            self._placed([v.get_value() for v in sources]),
            self._placed([v.get_value() for v in copy_sources]),
            n,
        )
        for var, value in zip(targets, new):
            var.set_value(value)
        for var, value in zip(copied, copies):
            var.set_value(value)
        self.n_averaged.set_value(n)

    def _placed(self, values: list[Any]) -> list[Any]:
        return values if self.device is None else jax.device_put(values, self.device)


# --------------------------------------------------------------------------------------------
# update_bn
# --------------------------------------------------------------------------------------------


@functools.cache
def _recording(kind: type) -> type:
    """A subclass of the BatchNorm class ``kind`` whose training call leaves *torch's* batch
    statistics in ``mean`` and ``var``: the batch mean and the unbiased batch variance."""

    def __call__(self: Any, x: Any, use_running_average: Any = None, *, mask: Any = None) -> Any:
        out = kind.__call__(self, x, use_running_average, mask=mask)
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        features = math.prod(x.shape[a] for a in axes)
        if mask is None:
            n = x.size // features
            if n <= 1:  # torch's check, which flax does not make
                raise ValueError(
                    "Expected more than 1 value per channel when training, got input size "
                    f"{tuple(x.shape)}"
                )
            correction = n / (n - 1)
        else:
            reduced = tuple(i for i in range(x.ndim) if i not in {a % x.ndim for a in axes})
            n = jnp.sum(mask, axis=reduced).reshape(self.var.shape)
            correction = n / (n - 1)
        self.var[...] = self.var[...] * correction
        return out

    return type(kind.__name__, (kind,), {"__call__": __call__, "__module__": kind.__module__})


@jax.jit
def _cumulate(running: list, batch: list, f: jax.Array) -> list:
    """torch's update with ``momentum=None`` at the ``k``-th batch, ``f = 1 / k``:
    ``r <- f * batch + (1 - f) * r``."""
    return [(f * b + (1 - f) * r).astype(r.dtype) for r, b in zip(running, batch)]


def _modes(model: nnx.Module) -> list[tuple[nnx.Module, str, Any]]:
    """Every train/eval flag in the model (``use_running_average``, ``deterministic``)."""
    return [
        (node, name, getattr(node, name))
        for _, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Module)
        for name in ("use_running_average", "deterministic")
        if name in vars(node)
    ]


def update_bn(loader: Iterable[Any], model: nnx.Module, device: Device | None = None) -> None:
    """Recompute the running statistics of every ``nnx.BatchNorm`` in ``model`` over ``loader``.

    torch's ``update_bn``: reset the statistics (``mean`` 0, ``var`` 1), run the model in
    training mode on each batch (a batch that is a list or tuple is ``(input, ...)``, and
    ``input`` goes to ``device`` if given) and set each layer's statistics to the cumulative
    average over the batches, as torch does with ``momentum=None``: ``mean`` the average of the
    batch means and ``var`` the average of the *unbiased* batch variances (torch's running
    variance; flax's BatchNorm keeps the biased one in training, so ``update_bn`` applies
    ``n / (n - 1)`` itself). The variance is computed in two passes
    (``use_fast_variance=False``), as torch's. Afterwards every layer's ``momentum``,
    ``use_fast_variance`` and every module's train/eval flag are as they were. The forward
    passes run under ``nnx.jit``.

    Differences from torch: a BatchNorm called twice in one forward pass counts the second
    call only (torch counts both); under ``axis_name`` the count ``n`` is per device. With
    these aside, the statistics agree with torch's to float32 rounding (relative error ~1e-6).
    """
    layers = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)]
    layers = list({id(layer): layer for layer in layers}.values())
    if not layers:
        return
    for layer in layers:
        layer.mean[...] = jnp.zeros_like(layer.mean[...])
        layer.var[...] = jnp.ones_like(layer.var[...])
    modes = _modes(model)
    saved = [(layer, type(layer), layer.momentum, layer.use_fast_variance) for layer in layers]
    model.train()
    try:
        for layer in layers:
            # momentum 0: each call leaves its batch's statistics, which are averaged here.
            layer.momentum = 0.0
            layer.use_fast_variance = False
            object.__setattr__(layer, "__class__", _recording(type(layer)))
        forward = nnx.jit(lambda m, x: m(x))
        running: list[Any] | None = None
        for k, batch in enumerate(loader, start=1):
            if isinstance(batch, list | tuple):
                batch = batch[0]
            if device is not None:
                batch = jax.device_put(batch, device)
            forward(model, batch)
            stats = [s for layer in layers for s in (layer.mean[...], layer.var[...])]
            running = stats if running is None else _cumulate(running, stats, jnp.asarray(1 / k))
        if running is not None:  # no batches: the statistics stay reset, as torch's
            for i, layer in enumerate(layers):
                layer.mean[...], layer.var[...] = running[2 * i], running[2 * i + 1]
    finally:
        for layer, kind, momentum, fast in saved:
            object.__setattr__(layer, "__class__", kind)
            layer.momentum = momentum
            layer.use_fast_variance = fast
        for node, name, value in modes:
            setattr(node, name, value)


# --------------------------------------------------------------------------------------------
# SWALR
# --------------------------------------------------------------------------------------------


def _linear_anneal(t: float) -> float:
    return t


def _cosine_anneal(t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2


class SWALR(LRScheduler):
    """torch's ``SWALR``: anneal each group's rate from its current value to ``swa_lr`` (a
    float, or one per group, stored as ``group["swa_lr"]``) over ``anneal_epochs`` steps,
    then hold it.

    Chainable, as torch's: at step ``t`` with ``a(t) = anneal(min(1, t / anneal_epochs))``
    (``anneal`` is ``(1 - cos(pi t)) / 2`` for ``"cos"``, the identity for ``"linear"``), the
    rate the previous step started from is recovered from the current one and
    ``lr = swa_lr * a(t) + start * (1 - a(t))``. ``state_dict()`` holds every attribute but
    the optimizer and the annealing function, as torch's.
    """

    def __init__(
        self,
        optimizer: Any,
        swa_lr: float | list[float],
        anneal_epochs: int = 10,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        last_epoch: int = -1,
    ) -> None:
        swa_lrs = _per_group("swa_lr", optimizer, swa_lr)
        for value, group in zip(swa_lrs, optimizer.param_groups):
            group["swa_lr"] = value
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(
                "anneal_strategy must be one of 'cos' or 'linear', "
                f"instead got {anneal_strategy}"
            )
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(
                f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}"
            )
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    def _set_anneal_func(self, anneal_strategy: str) -> None:
        self._anneal_strategy = anneal_strategy
        self.anneal_func = _cosine_anneal if anneal_strategy == "cos" else _linear_anneal

    @staticmethod
    def _get_initial_lr(lr: float, swa_lr: float, alpha: float) -> float:
        return swa_lr if alpha == 1 else (lr - alpha * swa_lr) / (1 - alpha)

    def _chain(self) -> list[float]:
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        span = max(1, self.anneal_epochs)
        prev_alpha = self.anneal_func(max(0, min(1, (step - 1) / span)))
        alpha = self.anneal_func(max(0, min(1, step / span)))
        groups = self.optimizer.param_groups
        return [
            group["swa_lr"] * alpha
            + self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha) * (1 - alpha)
            for group in groups
        ]

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer and the annealing function, as torch's."""
        return {
            key: value
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "anneal_func")
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes saved by :meth:`state_dict`."""
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)
