"""Cycling schedulers: ``CyclicLR`` and ``OneCycleLR`` (with ``cycle_momentum``) and
``CosineAnnealingWarmRestarts``; each sets the rate from the base rate, as torch does."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from jopt import schedules
from jopt.optim.lr_scheduler.base import (
    LRScheduler,
    _as_float,
    _check_optimizer,
    _function_state,
    _lrs,
    _per_group,
    _set_momentum,
)
from jopt.schedules.cycles import one_cycle_momentum_value, one_cycle_value


def _momentum_setup(
    scheduler: Any,
    optimizer: Any,
    base_momentum: Any,
    max_momentum: Any,
    last_epoch: int,
) -> tuple[list[Any], list[Any]]:
    """torch's ``cycle_momentum`` preparation: check the optimizer has a momentum (or
    ``betas``), and start each group at its ``max_momentum``."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
        )
    scheduler.use_beta1 = "betas" in optimizer.defaults
    bases = _per_group("base_momentum", optimizer, base_momentum)
    maxes = _per_group("max_momentum", optimizer, max_momentum)
    if last_epoch == -1:
        for top, bottom, group in zip(maxes, bases, optimizer.param_groups, strict=True):
            _set_momentum(group, top, scheduler.use_beta1)
            group["max_momentum"] = top
            group["base_momentum"] = bottom
    return bases, maxes


class CyclicLR(LRScheduler):
    """Cyclical learning rate (and momentum): torch's ``CyclicLR``, from
    :func:`jopt.schedules.cyclic_lr` and :func:`jopt.schedules.cyclic_momentum`."""

    def __init__(
        self,
        optimizer: Any,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                group["lr"] = lr
        self.max_lrs = _per_group("max_lr", optimizer, max_lr)
        self.step_size_up = float(step_size_up)
        self.step_size_down = (
            float(step_size_down) if step_size_down is not None else self.step_size_up
        )
        self.total_size = self.step_size_up + self.step_size_down
        self.step_ratio = self.step_size_up / self.total_size
        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.base_momentums, self.max_momentums = _momentum_setup(
                self, optimizer, base_momentum, max_momentum, last_epoch
            )
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _shape(self) -> dict[str, Any]:
        return dict(
            step_size_up=self.step_size_up,
            step_size_down=self.step_size_down,
            mode=self.mode,
            gamma=self.gamma,
            scale_fn=self._scale_fn_custom,
            scale_mode=self.scale_mode,
        )

    def _chain(self) -> list[float]:
        t, shape = self.last_epoch, self._shape()
        lrs = [
            _as_float(schedules.cyclic_lr(base, top, **shape)(t))
            for base, top in zip(self.base_lrs, self.max_lrs, strict=True)
        ]
        if self.cycle_momentum:
            for group, bottom, top in zip(
                self.optimizer.param_groups, self.base_momentums, self.max_momentums, strict=True
            ):
                value = _as_float(schedules.cyclic_momentum(bottom, top, **shape)(t))
                _set_momentum(group, value, self.use_beta1)
        return lrs

    def state_dict(self) -> dict[str, Any]:
        """torch's: a custom ``scale_fn`` is saved only as a callable object's ``__dict__``."""
        state = super().state_dict()
        fn = state.pop("_scale_fn_custom")
        state["_scale_fn_custom"] = None if fn is None else _function_state([fn])[0]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes, keeping this scheduler's own ``scale_fn``."""
        state = dict(state_dict)
        saved = state.pop("_scale_fn_custom")
        fn = self._scale_fn_custom
        super().load_state_dict(state)
        self._scale_fn_custom = fn
        if saved is not None and fn is not None:
            fn.__dict__.update(saved)


class OneCycleLR(LRScheduler):
    """The 1cycle policy: torch's ``OneCycleLR`` (two or three phases, cos or linear,
    ``cycle_momentum``), from the rule of :func:`jopt.schedules.one_cycle_lr`."""

    def __init__(
        self,
        optimizer: Any,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
                )
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self.pct_start = pct_start
        self.three_phase = three_phase
        self._anneal_func_type = anneal_strategy
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for top, group in zip(max_lrs, optimizer.param_groups, strict=True):
                group["initial_lr"] = top / div_factor
                group["max_lr"] = top
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            _momentum_setup(self, optimizer, base_momentum, max_momentum, last_epoch)
        super().__init__(optimizer, last_epoch)

    def _chain(self) -> list[float]:
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(
                f"Tried to step {t} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        phases = (self.total_steps, self.pct_start, self._anneal_func_type, self.three_phase)
        lrs = []
        with np.errstate(all="ignore"):
            for group in self.optimizer.param_groups:
                ends = (group["initial_lr"], group["max_lr"], group["min_lr"])
                lrs.append(_as_float(one_cycle_value(np, np.float64(t), *phases, *ends)))
                if self.cycle_momentum:
                    value = one_cycle_momentum_value(
                        np, np.float64(t), *phases, group["base_momentum"], group["max_momentum"]
                    )
                    _set_momentum(group, _as_float(value), self.use_beta1)
        return lrs


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing with warm restarts: torch's ``CosineAnnealingWarmRestarts``.

    ``T_cur`` counts the steps in the current cycle of length ``T_i`` (``T_0``, then times
    ``T_mult``); the rate is :func:`jopt.schedules.cosine_annealing_lr` at ``T_cur`` with period
    ``T_i``. ``step(epoch)`` accepts fractional epochs, as torch's does.
    """

    def __init__(
        self,
        optimizer: Any,
        T_0: int,  # noqa: N803
        T_mult: int = 1,  # noqa: N803
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, float | int):
            raise ValueError(
                f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}"
            )
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def _chain(self) -> list[float]:
        return [
            _as_float(schedules.cosine_annealing_lr(base, self.T_i, self.eta_min)(self.T_cur))
            for base in self.base_lrs
        ]

    def step(self, epoch: float | None = None) -> None:
        """Advance one step, or jump to ``epoch`` (which may be fractional)."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult**n
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)
