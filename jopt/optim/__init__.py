"""``torch.optim`` for JAX: the optimizer classes a PyTorch user already knows how to drive.

``jopt.optim.Adam(params, lr=1e-3)`` then ``loss = opt.step(loss_fn, x, y)``, ``opt.step(grads)``
or ``opt.zero_grad(); opt.backward(loss_fn, x, y); opt.step()``. ``params`` may be a tree, an
``nnx.Module`` (shared with the optimizer, as torch's parameters are), ``named_parameters(model)``
or param groups. The update rules are jopt's functional optimizers; see
:class:`jopt.optim.Optimizer`.
"""

from jopt.optim import lr_scheduler, swa_utils
from jopt.optim.algorithms import (
    ASGD,
    LBFGS,
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Muon,
    NAdam,
    RAdam,
    RMSprop,
    Rprop,
    SparseAdam,
)
from jopt.optim.clip import clip_grad_norm_, clip_grad_value_
from jopt.optim.optimizer import Optimizer, RecompileWarning
from jopt.optim.params import named_parameters
from jopt.optim.porting import from_torch

__all__ = [
    "ASGD",
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "RecompileWarning",
    "Rprop",
    "SparseAdam",
    "clip_grad_norm_",
    "clip_grad_value_",
    "from_torch",
    "lr_scheduler",
    "named_parameters",
    "swa_utils",
]
