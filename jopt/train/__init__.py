"""The research-script layer: Iris, an MLP, compiled training, sweeps and checkpoints.

A run reads top to bottom::

    import jopt
    from flax import nnx
    from jopt.train import MLP, fit, load_iris

    data = load_iris()                                  # stratified 120/30, standardized
    model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))          # 4-16-3 ReLU, torch's init
    result = fit(model, jopt.adam(lr=1e-2), data, epochs=100, batch_size=16, l2=1e-3)
    print(result.final("test_accuracy"))

``Trainer`` compiles epochs into one XLA program; ``drive`` calls it chunk by chunk with
callbacks (progress, checkpoints, ``EarlyStopping``); ``fit`` trains one run, ``sweep`` K
learning rates, weight decays or seeds in one ``vmap``-ed program, and ``run`` is ``jopt
train`` (a ``RunConfig``, checkpoints, resume, progress) as a function. The learning rate is
controlled by a ``Scheduled`` rule or a ``Plateau`` one (``lr_control=``); ``lr_find``
suggests one (Smith's range test, or a vmapped grid of short runs).
"""

from jopt.train.config import RunConfig
from jopt.train.data import DataLoader, Dataset, batch_indices, load_iris
from jopt.train.driver import Callback, EarlyStopping, drive
from jopt.train.finder import LrFindResult, lr_find, plot_lr_find
from jopt.train.loops import FitResult, SweepResult, fit, sweep
from jopt.train.lr import LrControl, Plateau, Scheduled, find_hyperparams, set_hyperparams
from jopt.train.model import (
    MLP,
    MLPFactory,
    cross_entropy,
    l2_penalty,
    merge_params,
    split_params,
)
from jopt.train.names import METRICS
from jopt.train.quantize import QuantizedLinear, model_bytes, quantize_dynamic
from jopt.train.runner import RunResult, Session, run
from jopt.train.sharding import Placement, make_mesh
from jopt.train.steps import (
    Trainer,
    TrainState,
    device_data,
    init_model,
    init_params,
    make_train_step,
)

__all__ = [
    "METRICS",
    "MLP",
    "Callback",
    "DataLoader",
    "Dataset",
    "EarlyStopping",
    "FitResult",
    "LrControl",
    "LrFindResult",
    "MLPFactory",
    "Placement",
    "Plateau",
    "QuantizedLinear",
    "RunConfig",
    "RunResult",
    "Scheduled",
    "Session",
    "SweepResult",
    "TrainState",
    "Trainer",
    "batch_indices",
    "cross_entropy",
    "device_data",
    "drive",
    "find_hyperparams",
    "fit",
    "init_model",
    "init_params",
    "l2_penalty",
    "load_iris",
    "lr_find",
    "make_mesh",
    "make_train_step",
    "merge_params",
    "plot_lr_find",
    "model_bytes",
    "quantize_dynamic",
    "run",
    "set_hyperparams",
    "split_params",
    "sweep",
]
