"""Learning-rate schedules: pure functions ``step -> lr`` with torch.optim.lr_scheduler's numbers.

Every factory returns a :data:`jopt.core.Schedule`, usable as ``lr=`` of any jopt optimizer (or
any float hyperparameter under ``jopt.inject_hyperparams``), inside ``jit`` and ``vmap``.

Each rule is written once and runs on two backends, chosen by the types of its inputs:

- a Python/NumPy step with Python/NumPy hyperparameters evaluates in NumPy float64 and returns
  a ``numpy.float64`` (a ``float``) — the same double arithmetic torch's schedulers do, which is
  what the ``jopt.optim.lr_scheduler`` classes build on; a NumPy array of steps gives an array;
- a traced or JAX step (or hyperparameter) evaluates in ``jax.numpy`` at JAX's default float
  precision, without Python branching on values.

The value at step ``t`` is what torch's scheduler of the same name sets after ``t`` calls of
``scheduler.step()`` (its ``last_epoch == t``), including torch's behaviour at and past the ends
of a schedule.
"""

from jopt.schedules.compose import lambda_lr, sequential
from jopt.schedules.cycles import cyclic_lr, cyclic_momentum, one_cycle_lr, one_cycle_momentum
from jopt.schedules.decay import (
    constant,
    constant_lr,
    cosine_annealing_lr,
    cosine_annealing_warm_restarts,
    exponential_lr,
    inverse_sqrt_decay,
    linear_lr,
    linear_warmup,
    multistep_lr,
    polynomial_lr,
    step_lr,
)
from jopt.schedules.sparsity import polynomial_sparsity

__all__ = [
    "constant",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "cyclic_momentum",
    "exponential_lr",
    "inverse_sqrt_decay",
    "lambda_lr",
    "linear_lr",
    "linear_warmup",
    "multistep_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "polynomial_lr",
    "polynomial_sparsity",
    "sequential",
    "step_lr",
]
