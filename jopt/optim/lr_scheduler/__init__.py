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

from jopt.optim.lr_scheduler.base import LRScheduler
from jopt.optim.lr_scheduler.closed_form import (
    ConstantLR,
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from jopt.optim.lr_scheduler.composite import ChainedScheduler, SequentialLR
from jopt.optim.lr_scheduler.cyclic import CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR
from jopt.optim.lr_scheduler.lambdas import LambdaLR, MultiplicativeLR
from jopt.optim.lr_scheduler.plateau import ReduceLROnPlateau

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
