"""The research-script layer: Iris, an MLP, compiled training, sweeps and checkpoints.

A run reads top to bottom::

    import jopt
    from flax import nnx
    from jopt.train import MLP, fit, load_iris

    data = load_iris()                                  # stratified 120/30, standardized
    model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))          # 4-16-3 ReLU, torch's init
    result = fit(model, jopt.adam(lr=1e-2), data, epochs=100, batch_size=16, l2=1e-3)
    print(result.final("test_accuracy"))

``fit`` compiles the epochs into one XLA program; ``sweep`` trains K learning rates, weight
decays or seeds in one program with ``vmap``; ``runner.run`` is ``jopt train`` (checkpoints,
resume, progress) as a function.
"""

from jopt.train.data import DataLoader, Dataset, batch_indices, load_iris
from jopt.train.loops import FitResult, SweepResult, fit, sweep
from jopt.train.lr import METRICS, Plateau, find_hyperparams, set_hyperparams
from jopt.train.model import MLP, cross_entropy, l2_penalty, merge_params, split_params
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
    "DataLoader",
    "Dataset",
    "FitResult",
    "Plateau",
    "SweepResult",
    "TrainState",
    "Trainer",
    "batch_indices",
    "cross_entropy",
    "device_data",
    "find_hyperparams",
    "fit",
    "init_model",
    "init_params",
    "l2_penalty",
    "load_iris",
    "make_train_step",
    "merge_params",
    "set_hyperparams",
    "split_params",
    "sweep",
]
