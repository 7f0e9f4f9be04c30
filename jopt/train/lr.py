"""Learning-rate control for the trainer, and an optimizer's injected hyperparameters.

A ``Trainer`` given an :class:`LrControl` sets the learning rate before every step from a
base learning rate held in the ``TrainState`` (what lets a sweep vary the base rate of a
scheduled run): :class:`Scheduled` follows ``(base_lr, step) -> lr``; :class:`Plateau` is
torch's ``ReduceLROnPlateau`` acting once per epoch on a metric of the epoch. Both are one
type to the trainer: ``init(base_lr)`` is the control's state in the ``TrainState``,
``lr(state, base_lr, step)`` the rate of a step and ``end_epoch(state, metrics)`` the state
after an epoch.

``find_hyperparams`` / ``set_hyperparams`` reach the ``hyperparams`` dict of the first
``inject_hyperparams`` state inside an optimizer state (jopt's or optax's, at the top or inside
a ``chain``). Values written keep their dtype and weak type, so a jitted step that takes the
state does not recompile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jopt.plateau import (
    ReduceOnPlateauState,
    check_plateau_args,
    mode_worse,
    plateau_step,
)
from jopt.train.names import METRICS

__all__ = ["LrControl", "LrSchedule", "Plateau", "Scheduled", "current_lr", "find_hyperparams",
           "set_hyperparams"]

LrSchedule = Callable[[jax.Array, jax.Array], jax.Array]
"""``(base_lr, step) -> lr``: a schedule whose base learning rate is data (see ``Trainer``)."""


class LrControl:
    """How a ``Trainer`` sets the learning rate: a base class with no state of its own."""

    def init(self, base_lr: jax.Array) -> Any:
        """The control's state at the start of a run (``TrainState.lr_state``)."""
        return None

    def lr(self, state: Any, base_lr: jax.Array, step: jax.Array) -> jax.Array:
        """The learning rate of optimizer step ``step`` (counted from 0)."""
        raise NotImplementedError

    def end_epoch(self, state: Any, metrics: dict[str, jax.Array]) -> Any:
        """The control's state after an epoch with these ``METRICS``."""
        return state


@dataclasses.dataclass(frozen=True)
class Scheduled(LrControl):
    """The rate ``schedule(base_lr, step)``: a per-step schedule of a data base rate."""

    schedule: LrSchedule

    def lr(self, state: Any, base_lr: jax.Array, step: jax.Array) -> jax.Array:
        return self.schedule(base_lr, step)


@dataclasses.dataclass(frozen=True)
class Plateau(LrControl):
    """torch's ``ReduceLROnPlateau`` stepped once per epoch on a metric of the epoch.

    Where a torch script calls ``scheduler.step(metric)`` after each epoch, a ``Trainer`` given
    ``lr_control=Plateau(patience=10)`` applies :func:`jopt.plateau_step` to ``metric`` (one
    of ``METRICS``; the epoch's training loss by default) and trains the next epoch at the rate
    it sets. The arguments are torch's.
    """

    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8
    metric: str = "train_loss"

    def __post_init__(self) -> None:
        check_plateau_args(self.mode, self.factor, self.threshold_mode)
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {list(METRICS)}")

    def init(self, base_lr: jax.Array) -> ReduceOnPlateauState:
        f32 = jnp.float32
        return ReduceOnPlateauState(
            lr=jnp.asarray(base_lr, f32),
            best=jnp.asarray(mode_worse(self.mode), f32),
            num_bad_epochs=jnp.zeros([], jnp.int32),
            cooldown_counter=jnp.zeros([], jnp.int32),
            last_epoch=jnp.zeros([], jnp.int32),
        )

    def lr(self, state: ReduceOnPlateauState, base_lr: jax.Array, step: jax.Array) -> jax.Array:
        return state.lr

    def end_epoch(self, state: ReduceOnPlateauState, metrics: dict[str, jax.Array]) -> Any:
        rule = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del rule["metric"]
        return plateau_step(state, metrics[self.metric], **rule)


# --------------------------------------------------------------------------------------------
# Hyperparameters in an optimizer state
# --------------------------------------------------------------------------------------------


def _has_hyperparams(x: Any) -> bool:
    return isinstance(x, tuple) and isinstance(getattr(x, "hyperparams", None), dict)


def find_hyperparams(opt_state: Any) -> dict[str, Any] | None:
    """The first ``hyperparams`` dict of an ``inject_hyperparams`` state in ``opt_state``."""
    if _has_hyperparams(opt_state):
        return opt_state.hyperparams
    if isinstance(opt_state, tuple | list):
        for child in opt_state:
            found = find_hyperparams(child)
            if found is not None:
                return found
    return None


def set_hyperparams(opt_state: Any, **values: Any) -> Any:
    """``opt_state`` with the first ``inject_hyperparams`` state's values replaced.

    Each new value keeps the dtype of the value it replaces, so a jitted step sees the same
    types and does not recompile.
    """
    if _has_hyperparams(opt_state):
        hyper = dict(opt_state.hyperparams)
        for name, value in values.items():
            if name not in hyper:
                raise KeyError(f"the optimizer has no injected hyperparameter {name!r}")
            hyper[name] = _like(value, hyper[name])
        return opt_state._replace(hyperparams=hyper)
    if isinstance(opt_state, tuple | list):
        children = list(opt_state)
        for i, child in enumerate(children):
            if find_hyperparams(child) is not None:
                children[i] = set_hyperparams(child, **values)
                return (
                    type(opt_state)(*children)
                    if _is_namedtuple(opt_state)
                    else type(opt_state)(children)
                )
    raise ValueError(
        "the optimizer state holds no hyperparameters: build the optimizer with "
        "jopt.inject_hyperparams(...) to set them"
    )


def _like(value: Any, old: Any) -> jax.Array:
    """``value`` with the dtype of ``old``, weakly typed where ``old`` is (a Python float
    assigned over a Python float's array keeps the jitted step's signature)."""
    dtype = jnp.result_type(old)
    if getattr(old, "weak_type", False) and isinstance(value, int | float):
        weak = jnp.asarray(float(value))
        if weak.dtype == dtype:
            return weak
    return jnp.asarray(value, dtype)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def current_lr(opt_state: Any) -> jax.Array:
    """The injected ``lr`` (or optax's ``learning_rate``) of ``opt_state``; NaN if none."""
    hyper = find_hyperparams(opt_state)
    for name in ("lr", "learning_rate"):
        if hyper is not None and name in hyper:
            return jnp.asarray(hyper[name], jnp.float32)
    return jnp.asarray(jnp.nan, jnp.float32)
