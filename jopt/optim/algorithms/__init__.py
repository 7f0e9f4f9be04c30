"""torch.optim's optimizer classes, each a mapping from torch's constructor to jopt's functional
optimizer. No arithmetic lives here: the update rules are those of :mod:`jopt.optimizers`.

Arguments that only choose a torch kernel (``foreach``, ``fused``, ``capturable``,
``differentiable``: "kernel flags") are accepted with torch's defaults, refused where torch
refuses them (``fused`` with ``foreach``, a tensor ``lr`` with ``foreach``), and kept in
``param_groups`` so that code and state dicts port unchanged; XLA fuses the step whatever they
say.

The modules follow the families of :mod:`jopt.optimizers`: :mod:`~.sgd` (SGD, ASGD),
:mod:`~.adam` (Adam, AdamW, Adamax, NAdam, RAdam, SparseAdam), :mod:`~.rms` (RMSprop, Adagrad,
Adadelta), :mod:`~.sign` (Rprop), :mod:`~.lbfgs` (LBFGS) and :mod:`~.shaped` (Adafactor, Muon:
rules that read each parameter's shape).
"""

from jopt.optim.algorithms.adam import Adam, Adamax, AdamW, NAdam, RAdam, SparseAdam
from jopt.optim.algorithms.lbfgs import LBFGS
from jopt.optim.algorithms.rms import Adadelta, Adagrad, RMSprop
from jopt.optim.algorithms.sgd import ASGD, SGD
from jopt.optim.algorithms.shaped import Adafactor, Muon
from jopt.optim.algorithms.sign import Rprop

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
    "RAdam",
    "RMSprop",
    "Rprop",
    "SparseAdam",
]
