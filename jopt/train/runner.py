"""One Iris run from a :class:`~jopt.train.config.RunConfig`: what ``jopt train`` does.

``run`` builds the data, model, optimizer and trainer from the configuration, then trains
through the epoch driver one compiled epoch per call, so that it can report progress, save
checkpoints every few epochs and resume from them: a resumed run executes the very same
compiled program on the very same state, so it ends bitwise equal to the run that was never
interrupted. A :class:`Session` keeps the compiled programs of the configurations it ran, for
as long as it lives (the command line holds one per process).

With several processes (``jax.distributed``) every process calls ``run`` alike: each saves the
shards its devices hold, and all of them resume from the same checkpoint, each array read
straight onto the run's placement, whatever mesh wrote it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jopt.train.checkpoint import CheckpointError, Checkpoints, UnreadableCheckpoint
from jopt.train.compress import with_pruning
from jopt.train.config import RunConfig
from jopt.train.data import Dataset, load_iris, num_batches
from jopt.train.driver import Callback, drive
from jopt.train.loops import FitResult
from jopt.train.model import MLPFactory
from jopt.train.names import METRICS
from jopt.train.recipes import make_lr_control, make_optimizer
from jopt.train.sharding import Placement, make_mesh
from jopt.train.steps import Trainer, TrainState, init_model

__all__ = ["RunConfig", "RunResult", "Session", "check_checkpoints", "restore_target", "run"]


@dataclasses.dataclass
class RunResult(FitResult):
    """A finished (or stopped) run of a configuration: a :class:`FitResult` whose history
    covers every epoch (a resumed run's included), with where it resumed and what it saved."""

    config: RunConfig | None = None
    resumed_from: int | None = None
    checkpoints: list[int] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    """What the run decided on its own: a checkpoint skipped as unreadable, a resume that found
    nothing to resume."""


def model_factory(config: RunConfig, data: Dataset) -> MLPFactory:
    """The configuration's model for ``data``'s features and classes."""
    return MLPFactory(data.num_features, tuple(config.hidden), data.num_classes,
                      config.activation, config.init)


class Session:
    """Trainers and initial parameters of the configurations run through it, reused when a
    configuration runs again (the ``max_configs`` most recent ones)."""

    def __init__(self, max_configs: int = 16) -> None:
        self.max_configs = max_configs
        self._built: dict[RunConfig, tuple[Dataset, Trainer, Any]] = {}

    def build(self, config: RunConfig, data: Dataset | None = None) -> tuple[Dataset, Trainer, Any]:
        """The data, the trainer and the initial parameters of ``config``'s run (kept per
        configuration when ``data`` is the configuration's own split)."""
        config.check()
        if data is not None:
            return (data, *_build(config, data))
        if config not in self._built:
            if len(self._built) >= self.max_configs:
                self._built.pop(next(iter(self._built)))
            data = load_iris(config.test_size, config.split_seed)
            self._built[config] = (data, *_build(config, data))
        return self._built[config]

    def run(self, config: RunConfig, **kwargs: Any) -> RunResult:
        """:func:`run` with this session's programs."""
        return run(config, session=self, **kwargs)


def _build(config: RunConfig, data: Dataset) -> tuple[Trainer, Any]:
    steps = num_batches(len(data.x_train), config.batch_size, config.drop_last)
    graphdef, params = init_model(model_factory(config, data), config.seed)
    trainer = Trainer(
        graphdef,
        with_pruning(make_optimizer(config.optimizer, config.lr, config.weight_decay), config,
                     steps),
        num_train=len(data.x_train),
        batch_size=config.batch_size,
        drop_last=config.drop_last,
        l2=config.l2,
        lr_control=make_lr_control(config, steps),
        placement=placement_of(config),
    )
    return trainer, params


def placement_of(config: RunConfig) -> Placement | None:
    """Where ``config`` runs: ``None`` on one device, else over ``config.devices``."""
    if config.devices == 1:
        return None
    return Placement(make_mesh(config.devices), fsdp=config.fsdp)


def restore_target(trainer: Trainer, state: TrainState) -> Any:
    """What a checkpoint restores onto for ``trainer``: ``state``'s shapes and dtypes with the
    shardings its placement gives (each process then reads only the shards its devices
    hold), or ``state``'s own device without one. A checkpoint written on any mesh restores
    onto this one."""
    if trainer.placement is None:
        return state
    shardings = trainer.placement.state(trainer.optimizer, state, batched=False)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state, shardings
    )


def check_checkpoints(checkpoints: Checkpoints, config: RunConfig, resume: bool) -> None:
    """Refuse, before anything compiles, a directory that does not fit the run: one that
    cannot be written; with ``resume``, a newest readable checkpoint of another configuration
    or beyond the run's epochs; without it, any checkpoint (it would be overwritten).
    ``CheckpointError`` says which."""
    checkpoints.check_writable()
    if not resume:
        if checkpoints.epochs():
            raise CheckpointError(
                f"{checkpoints.directory} already holds checkpoints (epochs "
                f"{', '.join(map(str, checkpoints.epochs()))}): resume them (--resume) or "
                "choose another directory"
            )
        return
    for epoch in reversed(checkpoints.epochs()):
        try:
            checkpoints.record(config.resume_record(), epoch)
        except UnreadableCheckpoint:
            continue
        if epoch > config.epochs:
            raise CheckpointError(
                f"checkpoint {checkpoints.path(epoch)} is at epoch {epoch}, beyond this run's "
                f"{config.epochs} epochs"
            )
        return


@dataclasses.dataclass(eq=False)
class _Saving(Callback):
    """Saves every ``every`` epochs and after the last, with the whole history so far."""

    checkpoints: Checkpoints
    config: RunConfig
    every: int
    history: dict[str, list[float]]

    def on_epoch(self, epoch: int, metrics: dict[str, np.ndarray], state: TrainState) -> None:
        for k in METRICS:
            self.history[k].append(float(metrics[k]))
        if epoch % self.every == 0 or epoch == self.config.epochs:
            self.checkpoints.save(state, self.config.resume_record(), self.history)


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
    session: Session | None = None,
) -> RunResult:
    """Train ``config``'s run, one compiled epoch per call.

    With ``checkpoints`` the state is saved every ``checkpoint_every`` epochs and after the
    last. ``resume`` continues from the newest checkpoint (a fresh start when there is none);
    without it a directory that already holds checkpoints is refused, so nothing is
    overwritten. ``on_start(first_epoch)`` and ``on_epoch(epoch, metrics)`` report progress;
    ``stop_after`` ends the run early after that epoch, as an interruption would. ``session``
    keeps compiled programs for the next run of the same configuration.
    """
    config.check()
    if checkpoints is None:
        return _run(config, data, None, checkpoint_every, False, on_epoch, on_start,
                    stop_after, session)
    with checkpoints.writing():  # one writer: a second run on the directory is refused
        check_checkpoints(checkpoints, config, resume)  # before compiling anything
        return _run(config, data, checkpoints, checkpoint_every, resume, on_epoch, on_start,
                    stop_after, session)


def _run(
    config: RunConfig,
    data: Dataset | None,
    checkpoints: Checkpoints | None,
    checkpoint_every: int,
    resume: bool,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    on_start: Callable[[int], None] | None,
    stop_after: int | None,
    session: Session | None,
) -> RunResult:
    data, trainer, params = (session or Session()).build(config, data)
    state = trainer.init(params, config.seed)
    previous: dict[str, list[float]] = {k: [] for k in METRICS}
    resumed_from = None
    notes: list[str] = []
    if checkpoints is not None and resume:
        if checkpoints.latest() is None:
            notes.append(f"no checkpoint in {checkpoints.directory}: training from epoch 0")
        else:
            target = restore_target(trainer, state)
            state, record, notes = checkpoints.restore_latest(target, config.resume_record())
            previous = {k: list(record["history"][k]) for k in METRICS}
            resumed_from = int(state.epoch)
    callbacks: list[Any] = []
    if on_start is not None or on_epoch is not None:
        callbacks.append(_Progress(on_start, on_epoch))
    if checkpoints is not None:
        history = {k: list(v) for k, v in previous.items()}
        callbacks.append(_Saving(checkpoints, config, checkpoint_every, history))
    if stop_after is not None:
        callbacks.append(lambda epoch, metrics, state: epoch >= stop_after)
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    done = drive(trainer, state, data, last, epochs_per_call=1, callbacks=callbacks)
    history = {
        k: np.concatenate([np.asarray(previous[k], np.float32), done.history[k]])
        for k in METRICS
    }
    return RunResult(
        done.state,
        history,
        trainer.graphdef,
        done.compile_seconds,
        done.train_seconds,
        config=config,
        resumed_from=resumed_from,
        checkpoints=checkpoints.epochs() if checkpoints is not None else [],
        notes=notes,
    )


@dataclasses.dataclass(eq=False)
class _Progress(Callback):
    start: Callable[[int], None] | None
    epoch: Callable[[int, dict[str, float]], None] | None

    def on_start(self, epoch: int) -> None:
        if self.start is not None:
            self.start(epoch)

    def on_epoch(self, epoch: int, metrics: dict[str, np.ndarray], state: TrainState) -> None:
        if self.epoch is not None:
            self.epoch(epoch, {k: float(v) for k, v in metrics.items()})
