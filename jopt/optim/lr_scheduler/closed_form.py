"""Schedulers with a closed form, stepped in torch's chainable form: each multiplies the
current rate by ``f(t) / f(t - 1)`` of its :mod:`jopt.schedules` factor ``f``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from jopt import schedules
from jopt.core import Schedule
from jopt.optim.lr_scheduler.base import (
    LRScheduler,
    _as_float,
    _lrs,
)


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
            ratio = _as_float(f(0))
        elif self._is_initial and self._hold_initial:
            ratio = 1.0
        else:
            before, now = _as_float(f(t - 1)), _as_float(f(t))
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
        now, before = _as_float(h(t)), _as_float(h(t - 1))
        if (t - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [
                lr + (base - eta_min) * (now - before)
                for lr, base in zip(_lrs(self.optimizer), self.base_lrs, strict=True)
            ]
        return [now / before * (lr - eta_min) + eta_min for lr in _lrs(self.optimizer)]
