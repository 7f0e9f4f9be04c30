"""The epoch driver: compiled epochs called one chunk at a time, with callbacks between them.

:func:`fit`, :func:`sweep` and ``jopt train`` (``runner.run``) all train through
:func:`drive`. A callback sees every epoch's metrics and the state after it: progress bars,
checkpoints and early stopping are callbacks; a learning-rate plateau rule is not, it runs
inside the compiled epoch (:mod:`jopt.train.lr`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jopt.train.data import Dataset
from jopt.train.names import METRICS
from jopt.train.steps import Trainer, TrainState, device_data

__all__ = ["Callback", "Driven", "EarlyStopping", "drive"]


class Callback:
    """Hooks of :func:`drive`; a subclass overrides what it needs."""

    def on_start(self, epoch: int) -> None:
        """Before training; ``epoch`` epochs are already done (a resumed run's)."""

    def on_epoch(self, epoch: int, metrics: dict[str, np.ndarray], state: TrainState) -> Any:
        """After epoch ``epoch`` (counted from 1) with its ``METRICS`` (one value per run of a
        sweep) and the state at the end of its compiled call; return ``True`` to stop there.

        The state is donated to the next call: copy what must outlive it.
        """
        return None


@dataclasses.dataclass(eq=False)
class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    epochs (``mode="min"`` for losses, ``"max"`` for accuracies); a sweep stops when no run
    improves."""

    metric: str = "test_loss"
    patience: int = 10
    mode: str = "min"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {list(METRICS)}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode {self.mode!r} is unknown: use 'min' or 'max'")

    def on_start(self, epoch: int) -> None:
        self.best: np.ndarray | None = None
        self.bad_epochs = 0

    def on_epoch(self, epoch: int, metrics: dict[str, np.ndarray], state: TrainState) -> bool:
        value = np.asarray(metrics[self.metric], np.float64)
        value = -value if self.mode == "max" else value
        best = self.best
        improved = best is None or bool(np.any(value < best - self.min_delta))
        self.best = value if best is None else np.minimum(best, value)
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        return self.bad_epochs >= self.patience


@dataclasses.dataclass
class Driven:
    """What :func:`drive` trained: the final state, the history of the epochs it ran (NumPy
    arrays with the epochs on the last axis) and its times, compilation apart."""

    state: TrainState
    history: dict[str, np.ndarray]
    compile_seconds: float
    train_seconds: float


def drive(
    trainer: Trainer,
    state: TrainState,
    data: Dataset | tuple,
    epochs: int,
    *,
    epochs_per_call: int | None = None,
    callbacks: Sequence[Callback | Callable[..., Any]] = (),
) -> Driven:
    """Train ``state`` (one run, or K stacked) up to epoch ``epochs``.

    The epochs run ``epochs_per_call`` at a time in one compiled call each: by default all in
    one call, or one per call when there are callbacks. A plain function among ``callbacks``
    is ``on_epoch(epoch, metrics, state)``. Time spent compiling and in callbacks is not
    counted in ``train_seconds``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    hooks = [c if isinstance(c, Callback) else _Function(c) for c in callbacks]
    arrays = device_data(data)
    done = int(np.asarray(state.epoch).reshape(-1)[0])
    remaining = max(epochs - done, 0)
    chunk = epochs_per_call or (1 if hooks else max(remaining, 1))
    compiled_before = trainer.compile_seconds
    for hook in hooks:
        hook.on_start(done)
    rows: list[dict[str, np.ndarray]] = []
    outside = 0.0
    start = time.perf_counter()
    while remaining > 0:
        n = min(chunk, remaining)
        state, history = trainer.run(state, arrays, n)
        history = {k: np.asarray(v) for k, v in history.items()}
        rows.append(history)
        done += n
        remaining -= n
        began = time.perf_counter()
        stop = False
        for i in range(n):
            metrics = {k: v[..., i] for k, v in history.items()}
            for hook in hooks:
                stop = bool(hook.on_epoch(done - n + i + 1, metrics, state)) or stop
        outside += time.perf_counter() - began
        if stop:
            break
    jax.block_until_ready(state)
    compile_seconds = trainer.compile_seconds - compiled_before
    seconds = time.perf_counter() - start - outside - compile_seconds
    merged = {
        k: np.concatenate([r[k] for r in rows], axis=-1) if rows else np.zeros(0)
        for k in METRICS
    }
    return Driven(state, merged, compile_seconds, seconds)


@dataclasses.dataclass(frozen=True)
class _Function(Callback):
    fn: Callable[[int, dict[str, np.ndarray], TrainState], Any]

    def on_epoch(self, epoch: int, metrics: dict[str, np.ndarray], state: TrainState) -> Any:
        return self.fn(epoch, metrics, state)
