"""``torch.optim.lr_scheduler`` on the facade optimizers: same classes, arguments and numbers.

A scheduler acts only through ``optimizer.param_groups``: it writes ``group["lr"]`` (and
``momentum`` or ``betas[0]`` for the cyclic ones), which the optimizer reads as data at its next
step, so the jitted step is never recompiled.

The values come from :mod:`jopt.schedules` (and :func:`jopt.plateau.plateau_step`), evaluated in
float64 on the host. Each ``step()`` follows torch's *chainable* form, so schedulers compose
exactly as torch's do (``ChainedScheduler``, two schedulers on one optimizer, a hand-edited
``lr``): a scheduler with a closed form ``lr_t = base_lr * f(t)`` multiplies the current rate by
``f(t) / f(t - 1)`` (keeping it where ``f`` does not change); ``CosineAnnealingLR`` does the same
around ``eta_min``; the others (``LambdaLR``, ``CyclicLR``, ``OneCycleLR``, warm restarts) set the
rate from the base rate, as torch does. ``step(epoch)`` (deprecated in torch) uses the closed form.
"""

from __future__ import annotations

import functools
import math
import types
import warnings
import weakref
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from jopt import schedules
from jopt.core import Schedule
from jopt.plateau import (
    ReduceOnPlateauState,
    check_plateau_args,
    mode_worse,
    plateau_step,
)

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_optimizer(optimizer: Any) -> None:
    if not hasattr(optimizer, "param_groups"):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


def _per_group(name: str, optimizer: Any, value: Any) -> list[Any]:
    """One value per param group: a list of the right length, or a scalar repeated."""
    if isinstance(value, list | tuple):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, "
                f"param_groups has {len(optimizer.param_groups)}."
            )
        return list(value)
    return [value] * len(optimizer.param_groups)


def _lrs(optimizer: Any) -> list[Any]:
    return [group["lr"] for group in optimizer.param_groups]


def _host(value: Any) -> float:
    """A schedule's host value (``numpy.float64``) as a plain Python float."""
    return float(value)


def _set_momentum(group: dict[str, Any], value: float, use_beta1: bool) -> None:
    if use_beta1:
        group["betas"] = (value, *group["betas"][1:])
    else:
        group["momentum"] = value


def _track_optimizer_step(optimizer: Any) -> None:
    """Mark the optimizer when it steps, for torch's call-order warnings."""
    step = getattr(optimizer, "step", None)
    if step is None or getattr(step, "_wrapped_by_lr_sched", False):
        return
    func = getattr(step, "__func__", None)
    if func is None:
        return
    ref = weakref.ref(optimizer)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opt = ref()
        opt._opt_called = True
        return func.__get__(opt, opt.__class__)(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = wrapper


def _function_state(functions: Sequence[Callable]) -> list[dict[str, Any] | None]:
    """torch saves the ``__dict__`` of callable objects, and nothing of plain functions."""
    return [None if isinstance(f, types.FunctionType) else f.__dict__.copy() for f in functions]


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class LRScheduler:
    """Base class of the schedulers: torch's ``LRScheduler``.

    The constructor records ``initial_lr`` in each param group (``base_lrs``) and takes the
    first step (``last_epoch`` becomes 0). ``step()`` advances ``last_epoch`` and writes the
    new rates into the groups; ``get_last_lr()`` returns them.
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when "
                        "resuming scheduler with last_epoch >= 0."
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        _track_optimizer_step(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer, as torch's."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes saved by :meth:`state_dict`."""
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list[float]:
        """The rates of the param groups after the last step."""
        return self._last_lr

    def get_lr(self) -> list[float]:
        """The rates the current step sets (torch's chainable form)."""
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, "
                "please use `get_last_lr()`.",
                UserWarning,
                stacklevel=2,
            )
        return self._chain()

    def _chain(self) -> list[float]:
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:
        """Advance one step (call it after ``optimizer.step``), as torch's ``step()``."""
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(
                    "Seems like `optimizer.step()` has been overridden after learning rate "
                    "scheduler initialization. Please, make sure to call `optimizer.step()` "
                    "before `lr_scheduler.step()`. See more details at "
                    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate",
                    UserWarning,
                    stacklevel=2,
                )
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(
                    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
                    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
                    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
                    "will result in PyTorch skipping the first value of the learning rate "
                    "schedule. See more details at "
                    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate",
                    UserWarning,
                    stacklevel=2,
                )
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                values = self._closed_form() if hasattr(self, "_closed_form_lr") else self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)

    def _closed_form(self) -> list[float]:
        return [_host(self._closed_form_lr(base)) for base in self.base_lrs]


# --------------------------------------------------------------------------------------------
# Schedulers with a closed form base_lr * f(t)
# --------------------------------------------------------------------------------------------


class _FactorScheduler(LRScheduler):
    """``lr_t = base_lr * f(t)`` with ``f`` a :mod:`jopt.schedules` schedule at ``lr = 1``.

    torch's chainable step: ``lr <- lr * f(t) / f(t-1)`` where ``f`` changes, with torch's
    two per-class exceptions: ``_start_at_zero``, ``lr <- lr * f(0)`` at ``t = 0`` (step,
    multistep, constant and linear); ``_hold_initial``, the constructor's step keeps the rate
    (exponential, polynomial and linear, which matters when resuming or nested).
    """

    _start_at_zero = True
    _hold_initial = False

    def _schedule(self, lr: float) -> Schedule:
        raise NotImplementedError

    def _closed_form_lr(self, base_lr: float) -> float:
        return self._schedule(base_lr)(self.last_epoch)

    def _chain(self) -> list[float]:
        f = self._schedule(1.0)
        t = self.last_epoch
        if t == 0 and self._start_at_zero:
            ratio = _host(f(0))
        elif self._is_initial and self._hold_initial:
            ratio = 1.0
        else:
            before, now = _host(f(t - 1)), _host(f(t))
            ratio = 1.0 if now == before else now / before
        return [lr if ratio == 1.0 else lr * ratio for lr in _lrs(self.optimizer)]


class StepLR(_FactorScheduler):
    """``lr_t = base_lr * gamma ** (t // step_size)``: torch's ``StepLR``."""

    def __init__(
        self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _schedule(self, lr: float) -> Schedule:
        return schedules.step_lr(lr, self.step_size, self.gamma)


class MultiStepLR(_FactorScheduler):
    """``lr_t = base_lr * gamma ** #{milestones <= t}``: torch's ``MultiStepLR``."""

    def __init__(
        self, optimizer: Any, milestones: Iterable[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _schedule(self, lr: float) -> Schedule:
        return schedules.multistep_lr(lr, list(self.milestones.elements()), self.gamma)


class ConstantLR(_FactorScheduler):
    """``lr_t = base_lr * factor`` until ``total_iters``, then ``base_lr``: ``ConstantLR``."""

    def __init__(
        self,
        optimizer: Any,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _schedule(self, lr: float) -> Schedule:
        return schedules.constant_lr(lr, self.factor, self.total_iters)


class LinearLR(_FactorScheduler):
    """``lr_t = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)``:
    torch's ``LinearLR``."""

    _hold_initial = True

    def __init__(
        self,
        optimizer: Any,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or "
                "equal to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _schedule(self, lr: float) -> Schedule:
        return schedules.linear_lr(lr, self.start_factor, self.end_factor, self.total_iters)


class ExponentialLR(_FactorScheduler):
    """``lr_t = base_lr * gamma ** t``: torch's ``ExponentialLR``."""

    _start_at_zero = False
    _hold_initial = True

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _schedule(self, lr: float) -> Schedule:
        return schedules.exponential_lr(lr, self.gamma)


class PolynomialLR(_FactorScheduler):
    """``lr_t = base_lr * (1 - min(t, total_iters) / total_iters) ** power``: ``PolynomialLR``."""

    _start_at_zero = False
    _hold_initial = True

    def __init__(
        self, optimizer: Any, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def _schedule(self, lr: float) -> Schedule:
        return schedules.polynomial_lr(lr, self.total_iters, self.power)


class CosineAnnealingLR(LRScheduler):
    """``lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``:
    torch's ``CosineAnnealingLR`` (periodic past ``T_max``, as torch's is).

    Chainable step: ``lr <- eta_min + (lr - eta_min) * h(t) / h(t-1)`` with ``h`` the cosine
    factor; where ``h(t-1) = 0`` (the troughs) the closed form's increment is added instead.
    """

    def __init__(
        self,
        optimizer: Any,
        T_max: int,  # noqa: N803
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def _closed_form_lr(self, base_lr: float) -> float:
        return schedules.cosine_annealing_lr(base_lr, self.T_max, self.eta_min)(self.last_epoch)

    def _chain(self) -> list[float]:
        t, eta_min = self.last_epoch, self.eta_min
        if self._is_initial:
            return _lrs(self.optimizer)
        if self._step_count == 1 and t > 0:
            return self._closed_form()
        h = schedules.cosine_annealing_lr(1.0, self.T_max)
        now, before = _host(h(t)), _host(h(t - 1))
        if (t - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [
                lr + (base - eta_min) * (now - before)
                for lr, base in zip(_lrs(self.optimizer), self.base_lrs, strict=True)
            ]
        return [now / before * (lr - eta_min) + eta_min for lr in _lrs(self.optimizer)]


# --------------------------------------------------------------------------------------------
# Schedulers that set the rate from the base rate
# --------------------------------------------------------------------------------------------


class LambdaLR(LRScheduler):
    """``lr_t = base_lr * lr_lambda(t)``: torch's ``LambdaLR`` (one lambda or one per group)."""

    def __init__(
        self,
        optimizer: Any,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = optimizer
        if not isinstance(lr_lambda, list | tuple):
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        else:
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(
                    f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}"
                )
            self.lr_lambdas = list(lr_lambda)
        super().__init__(optimizer, last_epoch)

    def _chain(self) -> list[float]:
        return [
            _host(schedules.lambda_lr(base, fn)(self.last_epoch))
            for fn, base in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        """torch's: the lambdas' ``__dict__`` for callable objects, ``None`` for functions."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = _function_state(self.lr_lambdas)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes and the callable objects' ``__dict__``."""
        state = dict(state_dict)
        lambdas = state.pop("lr_lambdas")
        self.__dict__.update(state)
        for fn, saved in zip(self.lr_lambdas, lambdas):
            if saved is not None:
                fn.__dict__.update(saved)


class MultiplicativeLR(LambdaLR):
    """``lr_t = lr_{t-1} * lr_lambda(t)``: torch's ``MultiplicativeLR`` (no closed form)."""

    def __init__(
        self,
        optimizer: Any,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        lambdas = lr_lambda if isinstance(lr_lambda, list | tuple) else [lr_lambda]
        if isinstance(lr_lambda, list | tuple) and len(lr_lambda) != len(optimizer.param_groups):
            raise ValueError(
                f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}"
            )
        for fn in lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
        super().__init__(optimizer, lr_lambda, last_epoch)

    def _chain(self) -> list[float]:
        if self._is_initial:
            return _lrs(self.optimizer)
        return [
            lr * fn(self.last_epoch)
            for fn, lr in zip(self.lr_lambdas, _lrs(self.optimizer), strict=True)
        ]


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
            _host(schedules.cyclic_lr(base, top, **shape)(t))
            for base, top in zip(self.base_lrs, self.max_lrs, strict=True)
        ]
        if self.cycle_momentum:
            for group, bottom, top in zip(
                self.optimizer.param_groups, self.base_momentums, self.max_momentums, strict=True
            ):
                value = _host(schedules.cyclic_momentum(bottom, top, **shape)(t))
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
                lrs.append(_host(schedules.one_cycle_value(np, np.float64(t), *phases, *ends)))
                if self.cycle_momentum:
                    value = schedules.one_cycle_momentum_value(
                        np, np.float64(t), *phases, group["base_momentum"], group["max_momentum"]
                    )
                    _set_momentum(group, _host(value), self.use_beta1)
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
            _host(schedules.cosine_annealing_lr(base, self.T_i, self.eta_min)(self.T_cur))
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


# --------------------------------------------------------------------------------------------
# Compositions
# --------------------------------------------------------------------------------------------


def _check_children(owner: str, optimizer: Any, children: Sequence[Any]) -> None:
    for i, child in enumerate(children):
        if not hasattr(child, "optimizer"):
            raise TypeError(f"{owner} at index {i} should have `optimizer` as its attribute.")
        if isinstance(child, ReduceLROnPlateau):
            raise ValueError(
                f"{owner} does not support `ReduceLROnPlateau` scheduler as it "
                "requires additional kwargs to be specified when calling `step`, "
                f"but got one at index {i} in the given schedulers sequence."
            )
        if optimizer != child.optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, but "
                f"got scheduler {child.__class__.__name__} at index {i} has {child.optimizer}, "
                f"which is different from {optimizer.__class__.__name__}."
            )


class _Composite(LRScheduler):
    """State dicts that nest the children's, as torch's."""

    _schedulers: list[Any]

    def state_dict(self) -> dict[str, Any]:
        """The attributes, with each child's state dict under ``_schedulers``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes and each child from its own state dict."""
        state = dict(state_dict)
        children = state.pop("_schedulers")
        self.__dict__.update(state)
        for child, saved in zip(self._schedulers, children, strict=True):
            child.load_state_dict(saved)


class SequentialLR(_Composite):
    """``schedulers[i]`` from ``milestones[i-1]`` on, restarted there: torch's ``SequentialLR``
    (:func:`jopt.schedules.sequential`)."""

    def __init__(
        self,
        optimizer: Any,
        schedulers: list[LRScheduler],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        name = type(self).__name__
        if len(schedulers) < 1:
            raise ValueError(f"{name} expects at least one scheduler, but got no scheduler.")
        _check_children(name, optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers "
                f"{len(schedulers)} and the number of milestones to be equal to {len(milestones)}"
            )
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def recursive_undo(self, sched: Any = None) -> None:
        """Take back the constructor's step of every (nested) child."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        """Step the scheduler in charge; at a milestone, restart the next one at 0."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_Composite):
    """Step several schedulers together, each acting on the rate the previous one left:
    torch's ``ChainedScheduler`` (multiplicative for the chainable schedulers)."""

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer: Any = None) -> None:
        name = type(self).__name__
        if len(schedulers) < 1:
            raise ValueError(
                f"{name} expects at least one scheduler to be chained, but got no scheduler."
            )
        optimizer = optimizer or schedulers[0].optimizer
        _check_children(name, optimizer, schedulers)
        self._schedulers = list(schedulers)
        self.optimizer = optimizer
        self._last_lr = _lrs(self._schedulers[-1].optimizer)

    def step(self) -> None:  # type: ignore[override]
        """Step every scheduler, in order."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _lrs(self._schedulers[-1].optimizer)


# --------------------------------------------------------------------------------------------
# ReduceLROnPlateau
# --------------------------------------------------------------------------------------------


class ReduceLROnPlateau(LRScheduler):
    """Reduce the rates when a metric stops improving: torch's ``ReduceLROnPlateau``.

    ``step(metric)`` is :func:`jopt.plateau.plateau_step` on the groups' rates (one vector),
    with ``min_lr`` per group.
    """

    def __init__(
        self,
        optimizer: Any,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if isinstance(min_lr, list | tuple):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(
                    f"expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}"
                )
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _lrs(optimizer)
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        check_plateau_args(mode, self.factor, threshold_mode)
        self.mode_worse = mode_worse(mode)
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        """Whether bad steps are being ignored after a reduction."""
        return self.cooldown_counter > 0

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """One step with the metric's current value."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    "The number of param groups in the `optimizer` "
                    f"({len(groups)}) differs from when `ReduceLROnPlateau` was initialized "
                    f"({len(self.min_lrs)}), usually due to a new param group being added to "
                    "the optimizer. Please modify the `min_lrs` field to match the length of "
                    "the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        old = np.array([float(group["lr"]) for group in groups])
        state = plateau_step(
            ReduceOnPlateauState(old, self.best, self.num_bad_epochs, self.cooldown_counter, 0),
            current,
            mode=self.mode,
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            threshold_mode=self.threshold_mode,
            cooldown=self.cooldown,
            min_lr=np.array(self.min_lrs, dtype=np.float64),
            eps=self.eps,
        )
        for group, before, after in zip(groups, old, state.lr, strict=True):
            if after != before:
                group["lr"] = float(after)
        self.best = float(state.best)
        self.num_bad_epochs = int(state.num_bad_epochs)
        self.cooldown_counter = int(state.cooldown_counter)
        self._last_lr = _lrs(self.optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes (torch's)."""
        self.__dict__.update(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
