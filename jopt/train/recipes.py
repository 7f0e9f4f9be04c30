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
from jopt.train.config import RunConfig
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
        if weight_decay != names.WEIGHT_DECAY[name]:  # torch's default spelled out: the same run
            kwargs["weight_decay"] = weight_decay
    return inject_hyperparams(OPTIMIZERS[name])(**kwargs)


def make_lr_control(config: RunConfig, steps_per_epoch: int) -> LrControl | None:
    """The trainer's learning-rate control for ``config``'s schedule (``None`` for ``"none"``),
    with the defaults of :meth:`RunConfig.resolved`; ``cosine`` anneals to 0 over all epochs,
    ``inverse-sqrt`` is ``lr / sqrt(1 + epoch)``, ``onecycle`` runs over every step."""
    config.check()
    c = config.resolved()
    spe = steps_per_epoch

    def per_epoch(build: Callable[[Any], Callable[[Any], Any]]) -> Scheduled:
        def lr_at(base_lr: jax.Array, step: jax.Array) -> jax.Array:
            return build(base_lr)(step // spe)

        return Scheduled(lr_at)

    if c.schedule == "none":
        return None
    if c.schedule == "plateau":
        return Plateau(factor=c.gamma)
    if c.schedule == "step":
        return per_epoch(lambda lr: S.step_lr(lr, c.step_size, c.gamma))
    if c.schedule == "multistep":
        return per_epoch(lambda lr: S.multistep_lr(lr, c.milestones, c.gamma))
    if c.schedule == "exponential":
        return per_epoch(lambda lr: S.exponential_lr(lr, c.gamma))
    if c.schedule == "cosine":
        return per_epoch(lambda lr: S.cosine_annealing_lr(lr, c.epochs))
    if c.schedule == "inverse-sqrt":
        return per_epoch(lambda lr: S.inverse_sqrt_decay(lr))
    total = c.epochs * spe  # onecycle: per batch

    def one_cycle(base_lr: jax.Array, step: jax.Array) -> jax.Array:
        return S.one_cycle_lr(base_lr, total)(step)

    return Scheduled(one_cycle)
