"""jopt: PyTorch's optimizers rebuilt for JAX.

The functional API: ``jopt.adam(lr=1e-3)`` is a ``GradientTransformation`` (optax's protocol)
that follows ``torch.optim.Adam`` step for step; ``jopt.inject_hyperparams`` makes its
hyperparameters data; ``jopt.optim`` is the ``torch.optim``-style facade on top.
"""

from jopt import schedules
from jopt.core import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    InjectHyperparamsState,
    Schedule,
    apply_updates,
    chain,
    check_tree_match,
    identity,
    inject_hyperparams,
)
from jopt.flat import flat_params
from jopt.optimizers import adagrad, adam, adamw, momentum, rmsprop, sgd
from jopt.plateau import ReduceOnPlateauState, plateau_step, reduce_on_plateau
from jopt.transforms import (
    ScaleByAdagradState,
    ScaleByAdamState,
    ScaleByLearningRateState,
    ScaleByRmsState,
    SkipNonfiniteState,
    TraceState,
    add_decayed_weights,
    add_l1_penalty,
    clip_by_global_norm,
    scale,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    skip_nonfinite,
    trace,
)

__version__ = "0.1.0"

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "InjectHyperparamsState",
    "ReduceOnPlateauState",
    "Schedule",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "ScaleByRmsState",
    "SkipNonfiniteState",
    "TraceState",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "add_l1_penalty",
    "apply_updates",
    "chain",
    "check_tree_match",
    "clip_by_global_norm",
    "flat_params",
    "identity",
    "inject_hyperparams",
    "momentum",
    "plateau_step",
    "reduce_on_plateau",
    "rmsprop",
    "scale",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "schedules",
    "sgd",
    "skip_nonfinite",
    "trace",
]
