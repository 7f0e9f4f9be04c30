"""``ReduceLROnPlateau`` on the param groups, by :func:`jopt.plateau.plateau_step`."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from jopt.optim.lr_scheduler.base import (
    EPOCH_DEPRECATION_WARNING,
    LRScheduler,
    _check_optimizer,
    _lrs,
)
from jopt.plateau import (
    ReduceOnPlateauState,
    check_plateau_args,
    mode_worse,
    plateau_counts,
    plateau_step,
)


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
        old = np.array([float(group["lr"]) for group in groups])
        before = ReduceOnPlateauState(old, self.best, self.num_bad_epochs, self.cooldown_counter, 0)
        if len(groups) != len(self.min_lrs) and self._reduces(before, current):
            # torch checks the groups against min_lrs when it reduces, not before
            if self.default_min_lr is None:
                raise RuntimeError(
                    "The number of param groups in the `optimizer` "
                    f"({len(groups)}) differs from when `ReduceLROnPlateau` was initialized "
                    f"({len(self.min_lrs)}), usually due to a new param group being added to "
                    "the optimizer. Please modify the `min_lrs` field to match the length of "
                    "the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        min_lrs = self.min_lrs if len(self.min_lrs) == len(groups) else [0.0] * len(groups)
        state = plateau_step(
            before,
            current,
            mode=self.mode,
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            threshold_mode=self.threshold_mode,
            cooldown=self.cooldown,
            min_lr=np.array(min_lrs, dtype=np.float64),
            eps=self.eps,
        )
        for group, before, after in zip(groups, old, state.lr, strict=True):
            if after != before:
                group["lr"] = float(after)
        self.best = float(state.best)
        self.num_bad_epochs = int(state.num_bad_epochs)
        self.cooldown_counter = int(state.cooldown_counter)
        self._last_lr = _lrs(self.optimizer)

    def _reduces(self, state: ReduceOnPlateauState, metric: float) -> bool:
        """Whether ``step(metric)`` from ``state`` drops the rate."""
        return bool(plateau_counts(
            state, metric, mode=self.mode, patience=self.patience, threshold=self.threshold,
            threshold_mode=self.threshold_mode,
        )[3])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes (torch's)."""
        self.__dict__.update(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
