"""``fit`` one run and ``sweep`` K runs at once, on the compiled epochs of a ``Trainer``."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from jopt.core import GradientTransformation, inject_hyperparams
from jopt.train.data import Dataset
from jopt.train.lr import METRICS, LrSchedule, Plateau
from jopt.train.model import MLP, merge_params, split_params
from jopt.train.steps import Trainer, TrainState, device_data, init_params, small_program_options

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
        return float(self.history[metric][-1])


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
    lr_schedule: LrSchedule | None = None,
    plateau: Plateau | None = None,
    epochs_per_call: int | None = None,
    callback: Callable[[TrainState, dict[str, np.ndarray]], None] | None = None,
    state: TrainState | None = None,
    trainer: Trainer | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` with ``optimizer`` for ``epochs`` epochs.

    ``model`` is an ``nnx.Module`` or its ``(graphdef, params)``; ``seed`` fixes the shuffling
    (the model arrives initialised). The epochs run
    ``epochs_per_call`` at a time in one compiled call each — all at once by default, one at a
    time when a ``callback(state, history_of_the_call)`` wants to see every epoch (to draw a
    progress bar or save a checkpoint; the state is donated to the next call, so copy what you
    keep). ``state`` resumes a run at ``state.epoch``; ``trainer`` reuses compiled programs.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    graphdef, params = model if isinstance(model, tuple) else split_params(model)
    if trainer is None:
        trainer = Trainer(
            graphdef,
            optimizer,
            len(data.x_train),
            batch_size,
            shuffle,
            drop_last,
            l2,
            lr_schedule,
            plateau,
        )
    if state is None:
        state = trainer.init(params, seed)
    arrays = device_data(data)
    done = int(state.epoch)
    remaining = max(epochs - done, 0)
    chunk = epochs_per_call or (1 if callback is not None else max(remaining, 1))
    before = trainer.compile_seconds
    if remaining:
        trainer.compile(state, arrays, min(chunk, remaining))
    rows: list[dict[str, np.ndarray]] = []
    start = time.perf_counter()
    while remaining > 0:
        n = min(chunk, remaining)
        if not trainer.is_compiled(state, n):
            pause = time.perf_counter()
            trainer.compile(state, arrays, n)
            start += time.perf_counter() - pause
        state, history = trainer.run(state, arrays, n)
        history = {k: np.asarray(v) for k, v in history.items()}
        rows.append(history)
        if callback is not None:
            callback(state, history)
        remaining -= n
    jax.block_until_ready(state)
    train_seconds = time.perf_counter() - start
    merged = {k: np.concatenate([r[k] for r in rows]) if rows else np.zeros(0) for k in METRICS}
    return FitResult(state, merged, graphdef, trainer.compile_seconds - before, train_seconds)


@dataclasses.dataclass
class SweepResult:
    """K runs trained together: their configurations, histories ``(K, epochs)`` and states."""

    lrs: np.ndarray
    weight_decays: np.ndarray | None
    seeds: np.ndarray
    history: dict[str, np.ndarray]
    state: TrainState
    compile_seconds: float
    train_seconds: float

    @property
    def runs(self) -> int:
        return len(self.lrs)

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
    lr_schedule: LrSchedule | None = None,
    plateau: Plateau | None = None,
    trainer: Trainer | None = None,
    **optimizer_kwargs: Any,
) -> SweepResult:
    """Train K = ``len(lrs)`` configurations at once: one compile, ``vmap`` over the runs.

    ``optimizer`` is a factory such as ``jopt.adam``; it is wrapped in
    ``jopt.inject_hyperparams`` so that ``lr`` (and ``weight_decay`` when given) are data with
    one value per run. Run ``k`` initialises ``model_fn`` (the 4-16-3 MLP by default) from
    ``seeds[k]`` with :func:`init_params` and shuffles with the same seed: it equals
    ``fit(model_fn(nnx.Rngs(jax.random.key(seeds[k]))), inject_hyperparams(optimizer)(
    lr=lrs[k], ...), data, seed=seeds[k])``.
    """
    lrs = np.asarray(lrs, np.float32).reshape(-1)
    k = len(lrs)
    seeds_arr = np.broadcast_to(np.asarray(seeds, np.uint32), (k,)).copy()
    hyper: dict[str, Any] = {"lr": lrs}
    if weight_decays is not None:
        hyper["weight_decay"] = np.broadcast_to(np.asarray(weight_decays, np.float32), (k,))
    if model_fn is None:
        model_fn = _default_model(data)
    first = {name: float(v[0]) for name, v in hyper.items()}
    opt = inject_hyperparams(optimizer)(**first, **optimizer_kwargs)
    params = _batched_init(model_fn)(seeds_arr)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))
    if trainer is None:
        trainer = Trainer(
            graphdef,
            opt,
            len(data.x_train),
            batch_size,
            shuffle,
            drop_last,
            l2,
            lr_schedule,
            plateau,
        )
    state = trainer.init_batched(params, seeds_arr, **hyper)
    arrays = device_data(data)
    before = trainer.compile_seconds
    trainer.compile(state, arrays, epochs)
    start = time.perf_counter()
    state, history = trainer.run(state, arrays, epochs)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return SweepResult(
        lrs,
        hyper.get("weight_decay"),
        seeds_arr,
        {key: np.asarray(v) for key, v in history.items()},
        state,
        trainer.compile_seconds - before,
        seconds,
    )


@functools.cache
def _batched_init(model_fn: Callable[[nnx.Rngs], nnx.Module]) -> Callable[[Any], Any]:
    """The compiled initialisation of K models from K seeds, kept across sweeps.

    ``lax.map``, not ``vmap``: K small initialisations in a loop compile like one (a batched
    random-number generator takes seconds to compile) and run in microseconds each.
    """
    return jax.jit(
        lambda seeds: jax.lax.map(lambda s: init_params(model_fn, s), seeds),
        compiler_options=small_program_options(),
    )


def _default_model(data: Dataset) -> Callable[[nnx.Rngs], nnx.Module]:
    return _mlp(data.num_features, data.num_classes)


@functools.cache
def _mlp(num_features: int, num_classes: int) -> Callable[[nnx.Rngs], nnx.Module]:
    """The default 4-16-3 MLP factory, one object per shape so its compiled init is reused."""

    def model_fn(rngs: nnx.Rngs) -> nnx.Module:
        return MLP(num_features, (16,), num_classes, rngs=rngs)

    return model_fn
