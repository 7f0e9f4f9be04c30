"""Schedules from a function or from other schedules: ``lambda_lr`` and ``sequential``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jopt.core import Schedule
from jopt.schedules.backend import (
    Scalar,
    Step,
    as_float,
    host_result,
    is_host,
    jax_result,
)


def lambda_lr(lr: Scalar, lr_lambda: Callable[[Any], Any]) -> Schedule:
    """``lr_t = lr * lr_lambda(t)``: torch's ``LambdaLR``.

    ``lr_lambda`` gets the step as given: a Python int from the host, a traced integer under
    ``jit`` (where it must be written with ``jax.numpy``).
    """
    lr = as_float(lr)

    def schedule(step: Step) -> Any:
        value = lr * lr_lambda(step)
        if is_host(step) and is_host(lr) and is_host(value):
            return host_result(value)
        return jax_result(value)

    return schedule


def sequential(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``schedules[i]`` from ``milestones[i - 1]`` on, counting its own steps from 0 there.

    torch's ``SequentialLR``: ``lr_t = schedules[i](t - milestones[i - 1])`` with ``i`` the
    number of milestones ``<= t``.
    """
    schedules, milestones = list(schedules), [int(m) for m in milestones]
    if len(schedules) < 1:
        raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler.")
    if len(milestones) != len(schedules) - 1:
        raise ValueError(
            "Sequential Schedulers expects number of schedulers provided to be one more "
            f"than the number of milestone points, but got number of schedulers {len(schedules)} "
            f"and the number of milestones to be equal to {len(milestones)}"
        )
    starts = [0, *milestones]

    def schedule(step: Step) -> Any:
        if is_host(step) and np.ndim(step) == 0:
            i = sum(m <= step for m in milestones)
            return schedules[i](step - starts[i])
        xp = np if is_host(step) else jnp
        t = xp.asarray(step)
        out = schedules[-1](t - starts[-1])
        for i in reversed(range(len(milestones))):
            out = xp.where(t < milestones[i], schedules[i](xp.maximum(t - starts[i], 0)), out)
        return host_result(out) if xp is np else jax_result(out)

    return schedule
