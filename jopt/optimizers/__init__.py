"""torch.optim's optimizers as short chains of :mod:`jopt.transforms`.

Each keeps torch's argument names, defaults and ``ValueError`` messages, and returns a
``GradientTransformation`` whose updates are added with ``jopt.apply_updates``. A term torch
skips (``weight_decay == 0``, ``momentum == 0``) is left out of the chain, so it costs nothing.
Hyperparameters may be floats, arrays (to ``vmap`` over) or, for ``lr``, a schedule; wrap a
factory in ``jopt.inject_hyperparams`` to change them between jitted steps.

The modules follow the families of :mod:`jopt.transforms`: :mod:`~jopt.optimizers.sgd` (SGD,
ASGD), :mod:`~jopt.optimizers.adam` (Adam, AdamW, Adamax, NAdam, RAdam, SparseAdam),
:mod:`~jopt.optimizers.rms` (RMSprop, Adagrad, Adadelta), :mod:`~jopt.optimizers.sign`
(Rprop), :mod:`~jopt.optimizers.factored` (Adafactor), :mod:`~jopt.optimizers.orthogonal`
(Muon) and :mod:`~jopt.optimizers.lbfgs` (L-BFGS, whose step evaluates the loss itself).
Beyond torch's: :mod:`~jopt.optimizers.hypergradient` (SGD-HD and Adam-HD, whose learning rate
follows its hypergradient; ``jopt.sgd_hd``, ``jopt.adam_hd``), kept out of this package's
``__all__``, which lists torch's optimizers.
"""

from jopt.optimizers.adam import adam, adamax, adamw, nadam, radam, sparse_adam
from jopt.optimizers.common import LearningRate, Scalar
from jopt.optimizers.factored import adafactor
from jopt.optimizers.lbfgs import Lbfgs, lbfgs
from jopt.optimizers.orthogonal import muon
from jopt.optimizers.rms import adadelta, adagrad, rmsprop
from jopt.optimizers.sgd import asgd, momentum, sgd
from jopt.optimizers.sign import rprop

__all__ = [
    "LearningRate",
    "Lbfgs",
    "Scalar",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "lbfgs",
    "momentum",
    "muon",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sparse_adam",
]
