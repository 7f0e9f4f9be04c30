"""The named optimizers and learning-rate schedules of the Iris recipe (and of the CLI).

Optimizers are jopt's, under ``jopt.inject_hyperparams`` so the learning rate is data the
trainer can read, schedule and sweep. Their names, the learning rate with which each trains
the 4-16-3 MLP on Iris and torch's weight decays are in :mod:`jopt.train.names`, which the
command line reads without importing JAX.

Schedules count **epochs**, as a torch script that calls ``scheduler.step()`` once per epoch
does: the rate is constant within an epoch and follows torch's closed form at epoch
boundaries (``schedule(step // steps_per_epoch)``). The exception is ``onecycle``, which
torch's documentation steps once per batch, over ``epochs * steps_per_epoch`` steps.
``plateau`` is ``ReduceLROnPlateau`` on the epoch's training loss (patience 10, factor 0.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

import jopt
from jopt import schedules as S
from jopt.core import GradientTransformation, inject_hyperparams
from jopt.train import names
from jopt.train.lr import LrControl, Plateau, Scheduled

__all__ = ["OPTIMIZERS", "make_lr_control", "make_optimizer", "muon_with_adamw"]


def muon_with_adamw(
    lr: Any = 1e-3, weight_decay: Any = 0.1
) -> GradientTransformation:
    """Muon on the weight matrices and AdamW (torch's betas and eps) on everything else, at one
    learning rate and weight decay: torch's Muon takes 2-D parameters only, and its
    documentation pairs it with AdamW for the biases."""
    return optax.multi_transform(
        {
            "matrix": jopt.muon(lr, weight_decay),
            "other": jopt.adamw(lr, weight_decay=weight_decay),
        },
        lambda params: jax.tree.map(lambda p: "matrix" if p.ndim == 2 else "other", params),
    )


OPTIMIZERS: dict[str, Callable[..., GradientTransformation]] = {
    "sgd": jopt.sgd,
    "momentum": jopt.momentum,
    "rmsprop": jopt.rmsprop,
    "adam": jopt.adam,
    "adamw": jopt.adamw,
    "adagrad": jopt.adagrad,
    "adadelta": jopt.adadelta,
    "adamax": jopt.adamax,
    "nadam": jopt.nadam,
    "radam": jopt.radam,
    "rprop": jopt.rprop,
    "asgd": jopt.asgd,
    "adafactor": jopt.adafactor,
    "muon": muon_with_adamw,
    "sparse_adam": jopt.sparse_adam,
}

if tuple(OPTIMIZERS) != names.OPTIMIZERS:  # pragma: no cover - a registry out of step
    raise ImportError("jopt.train.recipes.OPTIMIZERS and jopt.train.names.OPTIMIZERS differ")


def make_optimizer(
    name: str, lr: float | None = None, weight_decay: float | None = None
) -> GradientTransformation:
    """``inject_hyperparams(OPTIMIZERS[name])(lr=..., weight_decay=...)`` with the recipe's
    learning rate unless ``lr`` is given, and torch's weight decay unless given."""
    if name not in OPTIMIZERS:
        raise ValueError(names.suggest(name, OPTIMIZERS, "optimizer"))
    kwargs: dict[str, Any] = {"lr": names.DEFAULT_LR[name] if lr is None else lr}
    if weight_decay is not None:
        if names.WEIGHT_DECAY[name] is None:
            raise ValueError(f"{name} takes no weight_decay")
        kwargs["weight_decay"] = weight_decay
    return inject_hyperparams(OPTIMIZERS[name])(**kwargs)


def make_lr_control(
    name: str,
    epochs: int,
    steps_per_epoch: int,
    *,
    gamma: float | None = None,
    step_size: int | None = None,
    milestones: tuple[int, ...] | None = None,
) -> LrControl | None:
    """The trainer's learning-rate control for schedule ``name`` (``None`` for ``"none"``).

    Defaults scale with the run: ``step`` divides by 10 every ``epochs // 3`` epochs,
    ``multistep`` at 50% and 75% of the epochs, ``exponential`` by 0.95 per epoch, ``cosine``
    anneals to 0 over all epochs, ``inverse-sqrt`` is ``lr / sqrt(1 + epoch)``.
    """
    if name not in names.SCHEDULES:
        raise ValueError(names.suggest(name, names.SCHEDULES, "schedule"))
    spe = steps_per_epoch

    def per_epoch(build: Callable[[Any], Callable[[Any], Any]]) -> Scheduled:
        def lr_at(base_lr: jax.Array, step: jax.Array) -> jax.Array:
            return build(base_lr)(step // spe)

        return Scheduled(lr_at)

    if name == "none":
        return None
    if name == "plateau":
        return Plateau(factor=0.1 if gamma is None else gamma)
    if name == "step":
        size = step_size or max(1, epochs // 3)
        g = 0.1 if gamma is None else gamma
        return per_epoch(lambda lr: S.step_lr(lr, size, g))
    if name == "multistep":
        marks = milestones or (max(1, epochs // 2), max(1, 3 * epochs // 4))
        g = 0.1 if gamma is None else gamma
        return per_epoch(lambda lr: S.multistep_lr(lr, marks, g))
    if name == "exponential":
        g = 0.95 if gamma is None else gamma
        return per_epoch(lambda lr: S.exponential_lr(lr, g))
    if name == "cosine":
        return per_epoch(lambda lr: S.cosine_annealing_lr(lr, epochs))
    if name == "inverse-sqrt":
        return per_epoch(lambda lr: S.inverse_sqrt_decay(lr))
    total = epochs * spe  # onecycle: per batch

    def one_cycle(base_lr: jax.Array, step: jax.Array) -> jax.Array:
        return S.one_cycle_lr(base_lr, total)(step)

    return Scheduled(one_cycle)
