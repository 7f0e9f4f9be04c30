"""Building blocks: every update rule of jopt lives here, once, written as torch computes it.

Each function returns a ``GradientTransformation``. Hyperparameters may be Python floats,
arrays (traced under ``jit``/``vmap``/``inject_hyperparams``) or, for ``lr``, a schedule
``step -> lr``.

Precision follows torch's CPU kernels. Scalar coefficients are computed at the highest
precision at hand — a Python float's complement ``1 - beta`` and its logarithm in double on the
host, as torch does in Python — then cast to the compute dtype of each leaf: the leaf's own
dtype, or float32 for bfloat16/float16 leaves, which are computed in float32 and rounded back
(torch's "opmath"). State buffers keep the dtype of their parameter, as torch's
``zeros_like(param)`` do; updates keep the dtype of the gradient. Scalars torch keeps as
tensors (``step``, NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) are float64 when jax runs
in 64 bits and float32 otherwise, as torch's are under a default dtype of float64 or float32.

The modules are families of rules: :mod:`~jopt.transforms.common` (scale, decay and L1 terms,
clipping, learning rate, ``skip_nonfinite``), :mod:`~jopt.transforms.momentum`,
:mod:`~jopt.transforms.adam`, :mod:`~jopt.transforms.rms` (RMSprop, Adagrad, Adadelta),
:mod:`~jopt.transforms.sign` (Rprop), :mod:`~jopt.transforms.averaging` (ASGD),
:mod:`~jopt.transforms.factored` (Adafactor), :mod:`~jopt.transforms.orthogonal` (Muon) and
:mod:`~jopt.transforms.pruning` (pruned weights held at zero, gradual magnitude pruning).
"""

from jopt.transforms.adam import (
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByNadamState,
    ScaleByRadamState,
    ScaleBySparseAdamState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_nadam,
    scale_by_radam,
    scale_by_sparse_adam,
)
from jopt.transforms.averaging import ScaleByAsgdState, scale_by_asgd
from jopt.transforms.common import (
    ScaleByLearningRateState,
    SkipNonfiniteState,
    add_decayed_weights,
    add_l1_penalty,
    clip_by_global_norm,
    scale,
    scale_by_learning_rate,
    skip_nonfinite,
)
from jopt.transforms.factored import ScaleByAdafactorState, scale_by_adafactor
from jopt.transforms.hypergradient import ScaleByHypergradientState, scale_by_hypergradient
from jopt.transforms.momentum import EmaMomentumState, TraceState, ema_momentum, trace
from jopt.transforms.orthogonal import adjust_lr_by_shape, orthogonalize_by_newton_schulz
from jopt.transforms.pruning import (
    MagnitudePruningState,
    keep_pruned,
    magnitude_pruning,
    masked_updates,
)
from jopt.transforms.rms import (
    ScaleByAdadeltaState,
    ScaleByAdagradState,
    ScaleByRmsState,
    scale_by_adadelta,
    scale_by_adagrad,
    scale_by_rms,
)
from jopt.transforms.sign import ScaleByRpropState, scale_by_rprop

__all__ = [
    "EmaMomentumState",
    "MagnitudePruningState",
    "ScaleByAdadeltaState",
    "ScaleByAdafactorState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByHypergradientState",
    "ScaleByAsgdState",
    "ScaleByLearningRateState",
    "ScaleByNadamState",
    "ScaleByRadamState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleBySparseAdamState",
    "SkipNonfiniteState",
    "TraceState",
    "add_decayed_weights",
    "add_l1_penalty",
    "adjust_lr_by_shape",
    "clip_by_global_norm",
    "ema_momentum",
    "keep_pruned",
    "magnitude_pruning",
    "masked_updates",
    "orthogonalize_by_newton_schulz",
    "scale",
    "scale_by_adadelta",
    "scale_by_adafactor",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_asgd",
    "scale_by_hypergradient",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_sparse_adam",
    "skip_nonfinite",
    "trace",
]
