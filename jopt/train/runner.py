"""One Iris run from a flat configuration: what ``jopt train`` does, callable from Python.

``RunConfig`` names every choice of the recipe (optimizer, learning rate and schedule, model,
batching, regularisation, seeds). ``run`` builds the data, model, optimizer and trainer from
it, then trains one epoch per compiled call so that it can report progress, save checkpoints
every few epochs and resume from them: a resumed run executes the very same compiled program
on the very same state, so it ends bitwise equal to the run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jopt.train.checkpoint import CheckpointError, Checkpoints
from jopt.train.data import Dataset, load_iris, num_batches
from jopt.train.lr import METRICS, Plateau
from jopt.train.model import MLP
from jopt.train.recipes import make_lr_schedule, make_optimizer
from jopt.train.steps import Trainer, TrainState, device_data, init_model

__all__ = ["RunConfig", "RunResult", "run"]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The recipe: ``RunConfig()`` is the default Iris run (Adam, 100 epochs, batch 16)."""

    optimizer: str = "adam"
    lr: float | None = None  # None: the recipe's rate for the optimizer (recipes.DEFAULT_LR)
    weight_decay: float | None = None  # None: torch's default for the optimizer
    schedule: str = "none"
    gamma: float | None = None
    step_size: int | None = None
    milestones: tuple[int, ...] | None = None
    epochs: int = 100
    batch_size: int = 16
    drop_last: bool = False
    l2: float = 1e-3
    hidden: tuple[int, ...] = (16,)
    activation: str = "relu"
    init: str = "torch"
    seed: int = 0
    split_seed: int = 0
    test_size: float = 0.2

    def as_record(self) -> dict[str, Any]:
        """JSON-ready: what a checkpoint must agree with to be resumed."""
        record = dataclasses.asdict(self)
        for key in ("hidden", "milestones"):
            if record[key] is not None:
                record[key] = list(record[key])
        return record

    def model_fn(self, data: Dataset) -> Callable[[Any], MLP]:
        def build(rngs: Any) -> MLP:
            return MLP(data.num_features, self.hidden, data.num_classes, self.activation,
                       self.init, rngs=rngs)

        return build


@dataclasses.dataclass
class RunResult:
    """A finished (or stopped) run."""

    config: RunConfig
    history: dict[str, list[float]]
    state: TrainState
    graphdef: Any
    lr: float
    compile_seconds: float
    train_seconds: float
    resumed_from: int | None
    checkpoints: list[int]

    def final(self, metric: str) -> float:
        values = self.history[metric]
        return values[-1] if values else float("nan")


_BUILT: dict[RunConfig, tuple[Dataset, Trainer, Any]] = {}


def build(config: RunConfig, data: Dataset | None = None) -> tuple[Dataset, Trainer, Any]:
    """The data, the trainer and the initial parameters of ``config``'s run.

    With the default data the result is kept per configuration, so running a configuration
    again in the same process reuses its compiled programs.
    """
    if data is None:
        if config not in _BUILT:
            if len(_BUILT) >= 16:
                _BUILT.pop(next(iter(_BUILT)))
            _BUILT[config] = build(config, load_iris(config.test_size, config.split_seed))
        return _BUILT[config]
    steps = num_batches(len(data.x_train), config.batch_size, config.drop_last)
    graphdef, params = init_model(config.model_fn(data), config.seed)
    optimizer = make_optimizer(config.optimizer, config.lr, config.weight_decay)
    schedule = make_lr_schedule(
        config.schedule,
        config.epochs,
        steps,
        gamma=config.gamma,
        step_size=config.step_size,
        milestones=config.milestones,
    )
    trainer = Trainer(
        graphdef,
        optimizer,
        len(data.x_train),
        config.batch_size,
        True,
        config.drop_last,
        config.l2,
        lr_schedule=None if isinstance(schedule, Plateau) else schedule,
        plateau=schedule if isinstance(schedule, Plateau) else None,
    )
    return data, trainer, params


def run(
    config: RunConfig,
    *,
    data: Dataset | None = None,
    checkpoints: Checkpoints | None = None,
    checkpoint_every: int = 25,
    resume: bool = False,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Train ``config``'s run, one compiled epoch per call.

    With ``checkpoints`` the state is saved every ``checkpoint_every`` epochs and after the last.
    ``resume`` continues from the newest checkpoint (a fresh start when there is none); without
    it a directory that already holds checkpoints is refused, so nothing is overwritten.
    ``on_start(first_epoch)`` and ``on_epoch(epoch, metrics)`` report progress; ``stop_after``
    ends the run early after that epoch, as an interruption would.
    """
    if checkpoints is not None and resume and checkpoints.latest() is not None:
        checkpoints.record(config.as_record())  # a wrong directory fails before compiling
    data, trainer, params = build(config, data)
    state = trainer.init(params, config.seed)
    history: dict[str, list[float]] = {k: [] for k in METRICS}
    resumed_from = None
    if checkpoints is not None:
        if resume and checkpoints.latest() is not None:
            state, record = checkpoints.restore(state, config.as_record())
            history = {k: list(record["history"][k]) for k in METRICS}
            resumed_from = int(state.epoch)
        elif not resume and checkpoints.epochs():
            raise CheckpointError(
                f"{checkpoints.directory} already holds checkpoints (epochs "
                f"{', '.join(map(str, checkpoints.epochs()))}); resume them or use another "
                "directory"
            )
    arrays = device_data(data)
    first = int(state.epoch)
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    if on_start is not None:
        on_start(first)
    compiled_before = trainer.compile_seconds
    if first < last and not trainer.is_compiled(state, 1):
        trainer.compile(state, arrays, 1)
    saving = 0.0
    start = time.perf_counter()
    for epoch in range(first + 1, last + 1):
        state, metrics = trainer.run(state, arrays, 1)
        row = {k: float(np.asarray(v)[0]) for k, v in metrics.items()}
        for k in METRICS:
            history[k].append(row[k])
        if on_epoch is not None:
            on_epoch(epoch, row)
        if checkpoints is not None and (epoch % checkpoint_every == 0 or epoch == config.epochs):
            began = time.perf_counter()
            checkpoints.save(state, config.as_record(), history)
            saving += time.perf_counter() - began
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start - saving
    lr = history["lr"][-1] if history["lr"] else float("nan")
    return RunResult(
        config,
        history,
        state,
        trainer.graphdef,
        lr,
        trainer.compile_seconds - compiled_before,
        seconds,
        resumed_from,
        checkpoints.epochs() if checkpoints is not None else [],
    )
