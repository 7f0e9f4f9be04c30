"""Schedulers driven by a user function: ``LambdaLR`` and ``MultiplicativeLR``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jopt import schedules
from jopt.optim.lr_scheduler.base import (
    LRScheduler,
    _as_float,
    _function_state,
    _lrs,
)


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
            _as_float(schedules.lambda_lr(base, fn)(self.last_epoch))
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
