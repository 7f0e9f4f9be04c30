"""``fit`` one run and ``sweep`` K runs at once, through the epoch driver (:mod:`.driver`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from jopt.core import GradientTransformation, chain, inject_hyperparams
from jopt.train.data import Dataset
from jopt.train.driver import Callback, drive
from jopt.train.lr import LrControl
from jopt.train.model import MLPFactory, merge_params, split_params
from jopt.train.sharding import Placement
from jopt.train.steps import Trainer, TrainState

__all__ = ["FitResult", "SweepResult", "fit", "sweep"]


@dataclasses.dataclass
class FitResult:
    """A finished run: its final state, the per-epoch history (NumPy arrays) and timings."""

    state: TrainState
    history: dict[str, np.ndarray]
    graphdef: nnx.GraphDef
    compile_seconds: float
    train_seconds: float

    @property
    def params(self) -> Any:
        return self.state.params

    @property
    def model(self) -> nnx.Module:
        """The trained model as an ``nnx.Module``."""
        return merge_params(self.graphdef, self.state.params)

    def final(self, metric: str) -> float:
        """``metric`` after the last epoch; ``ValueError`` if no epoch was trained."""
        values = self.history[metric]
        if len(values) == 0:
            raise ValueError("the history is empty: no epoch was trained")
        return float(values[-1])


def fit(
    model: nnx.Module | tuple[nnx.GraphDef, Any],
    optimizer: GradientTransformation,
    data: Dataset,
    *,
    epochs: int = 100,
    batch_size: int = 16,
    shuffle: bool = True,
    drop_last: bool = False,
    l2: float = 0.0,
    seed: int = 0,
    lr_control: LrControl | Callable[..., Any] | None = None,
    epochs_per_call: int | None = None,
    callbacks: Sequence[Callback | Callable[..., Any]] = (),
    state: TrainState | None = None,
    trainer: Trainer | None = None,
    placement: Placement | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` with ``optimizer`` for ``epochs`` epochs.

    ``model`` is an ``nnx.Module`` or its ``(graphdef, params)``; ``seed`` fixes the shuffling
    (the model arrives initialised). ``lr_control`` sets the rate of every step
    (:mod:`jopt.train.lr`; the optimizer must then be built with ``jopt.inject_hyperparams``).
    The epochs run ``epochs_per_call`` at a time in one compiled call each: all at once by
    default, one at a time when there are ``callbacks`` (:class:`~jopt.train.driver.Callback`,
    or functions ``(epoch, metrics, state)``; one returning ``True`` stops the run). ``state``
    resumes a run at ``state.epoch``; ``trainer`` reuses its compiled programs.
    ``placement`` lays the run over a mesh of devices (:class:`~jopt.train.sharding.Placement`:
    data parallel, or fully sharded with ``fsdp=True``).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    graphdef, params = model if isinstance(model, tuple) else split_params(model)
    if trainer is None:
        trainer = Trainer(graphdef, optimizer, num_train=len(data.x_train),
                          batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, l2=l2,
                          lr_control=lr_control, placement=placement)
    if state is None:
        state = trainer.init(params, seed)
    done = drive(trainer, state, data, epochs, epochs_per_call=epochs_per_call,
                 callbacks=callbacks)
    return FitResult(done.state, done.history, graphdef, done.compile_seconds,
                     done.train_seconds)


@dataclasses.dataclass
class SweepResult:
    """K runs trained together: their configurations, histories ``(K, epochs)`` and states
    (every leaf with a leading axis K), and the model's structure."""

    lrs: np.ndarray
    weight_decays: np.ndarray | None
    seeds: np.ndarray
    history: dict[str, np.ndarray]
    state: TrainState
    compile_seconds: float
    train_seconds: float
    graphdef: nnx.GraphDef | None = None

    @property
    def runs(self) -> int:
        return len(self.lrs)

    def params_of(self, k: int) -> Any:
        """Run ``k``'s trained parameters (one run's tree, without the leading axis)."""
        if not -self.runs <= k < self.runs:
            raise IndexError(f"run {k} is out of range for {self.runs} runs")
        return jax.tree.map(lambda x: x[k], self.state.params)

    def best(self, metric: str = "test_accuracy") -> int:
        """Index of the run with the best final ``metric`` (ties: the lowest final test loss)."""
        final = self.history[metric][:, -1]
        better = -final if "loss" not in metric else final  # smaller is better after this
        loss = self.history["test_loss"][:, -1]
        order = np.lexsort((np.nan_to_num(loss, nan=np.inf), np.nan_to_num(better, nan=np.inf)))
        return int(order[0])


def sweep(
    optimizer: Callable[..., GradientTransformation],
    data: Dataset,
    lrs: Sequence[float] | np.ndarray,
    *,
    weight_decays: Sequence[float] | np.ndarray | None = None,
    seeds: Sequence[int] | np.ndarray | int = 0,
    model_fn: Callable[[nnx.Rngs], nnx.Module] | None = None,
    epochs: int = 100,
    batch_size: int = 16,
    shuffle: bool = True,
    drop_last: bool = False,
    l2: float = 0.0,
    lr_control: LrControl | Callable[..., Any] | None = None,
    callbacks: Sequence[Callback | Callable[..., Any]] = (),
    trainer: Trainer | None = None,
    placement: Placement | None = None,
    pruning: GradientTransformation | None = None,
    **optimizer_kwargs: Any,
) -> SweepResult:
    """Train K = ``len(lrs)`` configurations at once: one compile, ``vmap`` over the runs.

    ``optimizer`` is a factory such as ``jopt.adam``; it is wrapped in
    ``jopt.inject_hyperparams`` so that ``lr`` (and ``weight_decay`` when given) are data with
    one value per run. Run ``k`` initialises ``model_fn`` (the 4-16-3 MLP by default) from
    ``seeds[k]`` with :func:`~jopt.train.steps.init_params` and shuffles with the same seed: it
    equals ``fit(model_fn(nnx.Rngs(jax.random.key(seeds[k]))), inject_hyperparams(optimizer)(
    lr=lrs[k], ...), data, seed=seeds[k])``. Callbacks see each epoch's metrics of all K runs.
    ``placement`` splits the K runs over its devices (K a multiple of their number).

    ``pruning`` (a transformation such as :func:`jopt.magnitude_pruning`, or
    :func:`jopt.train.compress.make_pruning` of a configuration) is chained after the
    optimizer: each run trains ``chain(inject_hyperparams(optimizer)(lr=lrs[k], ...),
    pruning)``, and equals ``fit`` with that optimizer. The masks are optimizer state, so each
    run ranks and prunes its own weights. ``pruning`` and ``optimizer_kwargs`` build the
    trainer's optimizer: give them without ``trainer``.
    """
    if trainer is not None and pruning is not None:
        raise ValueError("pruning is part of the trainer's optimizer: give a trainer or pruning, "
                         "not both")
    lrs = np.asarray(lrs, np.float32).reshape(-1)
    k = len(lrs)
    seeds_arr = np.broadcast_to(np.asarray(seeds, np.uint32), (k,)).copy()
    hyper: dict[str, Any] = {"lr": lrs}
    if weight_decays is not None:
        hyper["weight_decay"] = np.broadcast_to(np.asarray(weight_decays, np.float32), (k,))
    if model_fn is None:
        model_fn = MLPFactory(data.num_features, (16,), data.num_classes)
    if trainer is None:
        first = {name: float(v[0]) for name, v in hyper.items()}
        opt = inject_hyperparams(optimizer)(**first, **optimizer_kwargs)
        if pruning is not None:
            opt = chain(opt, pruning)
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))
        trainer = Trainer(graphdef, opt, num_train=len(data.x_train), batch_size=batch_size,
                          shuffle=shuffle, drop_last=drop_last, l2=l2, lr_control=lr_control,
                          placement=placement)
    params = trainer.params_of(model_fn, seeds_arr)
    state = trainer.init_batched(params, seeds_arr, **hyper)
    done = drive(trainer, state, data, epochs, callbacks=callbacks)
    return SweepResult(lrs, hyper.get("weight_decay"), seeds_arr, done.history, done.state,
                       done.compile_seconds, done.train_seconds, trainer.graphdef)
