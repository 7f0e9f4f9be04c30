"""Compiled training: a donated train step, and epochs as one XLA program (``Trainer``).

Everything runs on the pure form of the model, ``(graphdef, params)``: the parameters, the
optimizer state, the epoch counter and the shuffling key form a ``TrainState`` pytree, and an
epoch is a pure function of it — shuffle with ``jax.random``, gather the batches, ``scan`` the
train step over them, evaluate on the test set. ``Trainer`` compiles ``epochs`` of that (one
XLA program, the state's buffers donated) and ``vmap``-s it for sweeps, where a batch of
states differs only in data (learning rates, weight decays, seeds), so K runs are one compile.
``fit`` and ``sweep`` (in :mod:`jopt.train.loops`) drive it.

Learning rates: an optimizer built with a schedule (``jopt.adam(lr=schedule)``) follows it by
itself. A ``Trainer`` given an ``lr_control`` (:mod:`jopt.train.lr`: a schedule of a base rate,
or a reduce-on-plateau rule) instead writes the learning rate into the optimizer's
``inject_hyperparams`` state before every step, from a base learning rate held in the
``TrainState`` — which is what lets a sweep vary the base learning rate of a scheduled run.
Steps count optimizer updates from 0; a torch-style per-epoch schedule is ``schedule(step //
steps_per_epoch)`` (see :mod:`jopt.train.recipes`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jopt.core import GradientTransformation
from jopt.train.data import Dataset, batch_indices, epoch_key, num_batches, shuffle_key
from jopt.train.lr import LrControl, Scheduled, current_lr, find_hyperparams, set_hyperparams
from jopt.train.model import apply, cross_entropy, loss_and_metrics, split_params
from jopt.train.names import METRICS
from jopt.train.sharding import Placement, put

__all__ = [
    "TrainState",
    "Trainer",
    "device_data",
    "init_model",
    "init_params",
    "make_train_step",
]


class TrainState(NamedTuple):
    """Everything a run carries from one epoch to the next; a checkpoint is this tree.

    ``key`` is the raw data of the shuffling key (``jax.random.key_data``), ``epoch`` counts
    finished epochs, ``base_lr`` is the learning rate the trainer's ``lr_control`` scales (NaN
    when the trainer does not control the learning rate), ``lr_state`` that control's state
    (a plateau rule's) or ``None``.
    """

    params: Any
    opt_state: Any
    epoch: jax.Array
    key: jax.Array
    base_lr: jax.Array
    lr_state: Any = None


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------


def make_train_step(
    graphdef: nnx.GraphDef, optimizer: GradientTransformation, l2: float = 0.0
) -> Callable[..., tuple[Any, Any, jax.Array]]:
    """A jitted train step ``(params, opt_state, x, y) -> (params, opt_state, loss)``.

    Forward, backward and the optimizer update are one XLA call; ``params`` and ``opt_state``
    are donated, so the update happens in their buffers (do not reuse the arrays passed in).
    """

    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, Any]:
        def objective(p: Any) -> tuple[jax.Array, Any]:
            return loss_and_metrics(graphdef, p, x, y, None, l2)

        (_, (ce, _)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, ce

    return jax.jit(step, donate_argnums=(0, 1), compiler_options=small_program_options())


# --------------------------------------------------------------------------------------------
# The trainer: compiled epochs
# --------------------------------------------------------------------------------------------


@functools.cache
def small_program_options() -> dict[str, Any]:
    """XLA options for the small programs of a research run: on CPU, the legacy fusion
    emitters (``xla_cpu_use_fusion_emitters=False``), which compile an Iris epoch in about
    60% of the time the default emitters take; on other backends, or an XLA without the
    option (checked once with a tiny program), none."""
    if jax.default_backend() != "cpu":
        return {}
    options = {"xla_cpu_use_fusion_emitters": False}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
    except Exception:  # an option this XLA does not know: compile with its defaults
        return {}
    return options


def init_model(
    model_fn: Callable[[nnx.Rngs], nnx.Module], seed: int = 0
) -> tuple[nnx.GraphDef, Any]:
    """``(graphdef, params)`` of ``model_fn(nnx.Rngs(jax.random.key(seed)))``, built by one
    compiled call (the same numbers ``sweep`` starts run ``k`` from for ``seeds[k] == seed``).
    """
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))
    init = jax.jit(lambda s: init_params(model_fn, s), compiler_options=small_program_options())
    params = init(np.uint32(seed))
    return graphdef, params


def init_params(model_fn: Callable[[nnx.Rngs], nnx.Module], seed: int | jax.Array) -> Any:
    """The parameters of ``model_fn(nnx.Rngs(jax.random.key(seed)))`` as a plain dict.

    Traceable: ``jax.vmap(partial(init_params, model_fn))(seeds)`` initialises K models, each
    equal to the one this function builds from its seed alone.
    """
    return split_params(model_fn(nnx.Rngs(jax.random.key(seed))))[1]


@dataclasses.dataclass(eq=False)
class Trainer:
    """Compiled epochs of one recipe: a model structure, an optimizer and a batching.

    The data are arguments of the compiled programs, not constants in them, so a trainer
    serves any dataset with ``num_train`` training rows. ``lr_control`` sets the learning rate
    of every step (a :class:`~jopt.train.lr.LrControl`, or a bare ``(base_lr, step) -> lr``);
    ``compiler_options`` go to XLA (default: XLA:CPU's legacy emitters, which compile an Iris
    epoch in about 60% of the time). ``run`` takes one state or K states stacked (every
    ``TrainState`` leaf with a leading axis K, from :meth:`init_batched`). The trainer owns its
    compiled programs, one per kind of state and number of epochs per call, for its lifetime.
    """

    graphdef: nnx.GraphDef
    optimizer: GradientTransformation
    _: dataclasses.KW_ONLY
    num_train: int
    batch_size: int = 16
    shuffle: bool = True
    drop_last: bool = False
    l2: float = 0.0
    lr_control: LrControl | Callable[[jax.Array, jax.Array], jax.Array] | None = None
    compiler_options: dict[str, Any] | None = None
    compile_seconds: float = 0.0
    placement: Placement | None = None

    def __post_init__(self) -> None:
        if self.lr_control is not None and not isinstance(self.lr_control, LrControl):
            self.lr_control = Scheduled(self.lr_control)
        self.steps_per_epoch = num_batches(self.num_train, self.batch_size, self.drop_last)
        if self.placement is not None:
            self.placement.check_batch(self.batch_size)
        self._compiled: dict[tuple[str, int], Any] = {}
        self._param_inits: dict[Any, Any] = {}
        self._placements: dict[str, Any] = {}
        if self.compiler_options is None:
            self.compiler_options = small_program_options()
        options = self.compiler_options
        self._init = jax.jit(self._init_state, compiler_options=options)
        self._init_batched = jax.jit(jax.vmap(self._init_state), compiler_options=options)

    def params_of(self, model_fn: Callable[[nnx.Rngs], nnx.Module], seeds: Any) -> Any:
        """The parameters of ``model_fn`` from each of ``seeds`` (a leading axis K), each
        equal to :func:`init_params` of its seed; compiled once per ``model_fn``.

        ``lax.map``, not ``vmap``: K small initialisations in a loop compile like one (a
        batched random-number generator takes seconds to compile) and run in microseconds.
        """
        if model_fn not in self._param_inits:
            self._param_inits[model_fn] = jax.jit(
                lambda s: jax.lax.map(lambda one: init_params(model_fn, one), s),
                compiler_options=self.compiler_options,
            )
        return self._param_inits[model_fn](np.asarray(seeds, np.uint32))

    # -- state ---------------------------------------------------------------------------

    def _init_state(
        self, params: Any, seed: jax.Array, hyperparams: dict[str, jax.Array]
    ) -> TrainState:
        opt_state = self.optimizer.init(params)
        if hyperparams:
            opt_state = set_hyperparams(opt_state, **hyperparams)
        control = self.lr_control
        base_lr = current_lr(opt_state) if control else jnp.asarray(jnp.nan, jnp.float32)
        if control is not None and find_hyperparams(opt_state) is None:
            raise ValueError("lr_control needs an optimizer built with jopt.inject_hyperparams")
        lr_state = None if control is None else control.init(base_lr)
        key = jax.random.key_data(shuffle_key(seed))
        state = TrainState(params, opt_state, jnp.zeros([], jnp.int32), key, base_lr, lr_state)
        # Strongly typed leaves: a state restored from a checkpoint has the same types, so it
        # runs in the same compiled program.
        return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)

    def init(self, params: Any, seed: int = 0, **hyperparams: float) -> TrainState:
        """The state before the first epoch; ``hyperparams`` override injected ones (``lr=``)."""
        values = {k: np.float32(v) for k, v in hyperparams.items()}
        return self._init(params, np.uint32(seed), values)

    def init_batched(
        self, params: Any, seeds: Sequence[int] | np.ndarray, **hyperparams: Any
    ) -> TrainState:
        """K states at once: ``params`` and each of ``hyperparams`` have a leading axis K."""
        values = {k: np.asarray(v, np.float32) for k, v in hyperparams.items()}
        return self._init_batched(params, np.asarray(seeds, np.uint32), values)

    # -- the epoch -----------------------------------------------------------------------

    def _epoch(
        self, state: TrainState, data: tuple[jax.Array, ...], shard_batch: bool = False
    ) -> tuple[TrainState, Any]:
        x_train, y_train, x_test, y_test = data
        n, steps = x_train.shape[0], self.steps_per_epoch
        key = epoch_key(jax.random.wrap_key_data(state.key), state.epoch)
        idx, mask = batch_indices(key, n, self.batch_size, self.shuffle, self.drop_last)
        padded = steps * self.batch_size > n
        first_step = state.epoch * steps
        control = self.lr_control

        def step(carry: tuple[Any, Any], batch: tuple[jax.Array, ...]) -> tuple[Any, Any]:
            params, opt_state = carry
            i, rows, keep = batch
            x, y = x_train[rows], y_train[rows]
            m = keep if padded else None
            if shard_batch:  # data parallel: each device takes its rows, XLA sums the grads
                x, y = jax.lax.with_sharding_constraint((x, y), self.placement.batch())
                m = None if m is None else jax.lax.with_sharding_constraint(
                    m, self.placement.batch()
                )
            if control is not None:
                lr = control.lr(state.lr_state, state.base_lr, i)
                opt_state = set_hyperparams(opt_state, lr=lr)

            def objective(p: Any) -> tuple[jax.Array, Any]:
                return loss_and_metrics(self.graphdef, p, x, y, m, self.l2)

            (_, (ce, correct)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            weight = jnp.sum(keep)
            return (params, opt_state), (ce * weight, correct)

        steps_index = first_step + jnp.arange(steps, dtype=jnp.int32)
        (params, opt_state), (losses, correct) = jax.lax.scan(
            step, (state.params, state.opt_state), (steps_index, idx, mask)
        )
        seen = jnp.sum(mask)
        logits = apply(self.graphdef, params, x_test)
        values = (
            jnp.sum(losses) / seen,
            jnp.sum(correct) / seen,
            cross_entropy(logits, y_test),
            jnp.mean((jnp.argmax(logits, -1) == y_test).astype(jnp.float32)),
            current_lr(opt_state),
        )
        metrics = dict(zip(METRICS, values, strict=True))
        lr_state = state.lr_state if control is None else control.end_epoch(state.lr_state, metrics)
        new = TrainState(params, opt_state, state.epoch + 1, state.key, state.base_lr, lr_state)
        return new, metrics

    def _run(
        self, state: TrainState, data: tuple[jax.Array, ...], epochs: int, shard_batch: bool
    ) -> Any:
        return jax.lax.scan(
            lambda s, _: self._epoch(s, data, shard_batch), state, None, length=epochs
        )

    # -- compiled programs ---------------------------------------------------------------

    def _program(self, kind: str, epochs: int, state: TrainState, data: Any) -> Any:
        key = (kind, epochs)
        if key not in self._compiled:
            placed = self.placement
            fn = functools.partial(self._run, shard_batch=placed is not None and kind == "single")
            if kind != "single":
                fn = jax.vmap(fn, in_axes=(0, None, None))
            shardings = {}
            if placed is not None:
                where = self._shardings(kind, state)
                shardings = dict(in_shardings=(where, placed.replicated()),
                                 out_shardings=(where, placed.replicated()))
            jitted = jax.jit(fn, static_argnums=2, donate_argnums=0,
                             compiler_options=self.compiler_options, **shardings)
            start = time.perf_counter()
            self._compiled[key] = jitted.lower(state, data, epochs).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def _shardings(self, kind: str, state: TrainState) -> Any:
        """Where the placement puts a state of this kind (worked out once per kind)."""
        if kind not in self._placements:
            self._placements[kind] = self.placement.state(
                self.optimizer, state, batched=kind != "single"
            )
        return self._placements[kind]

    def place(self, state: TrainState, data: Any = None) -> tuple[TrainState, Any]:
        """``state`` (and ``data``'s arrays) on the trainer's devices, as its placement says;
        as they are without one."""
        arrays = None if data is None else device_data(data)
        if self.placement is None:
            return state, arrays
        state = put(state, self._shardings(_kind(state), state))
        if arrays is not None:
            arrays = put(arrays, (self.placement.replicated(),) * len(arrays))
        return state, arrays

    def is_compiled(self, state: TrainState, epochs: int) -> bool:
        """Whether ``run(state, ..., epochs)`` has its program already."""
        return (_kind(state), epochs) in self._compiled

    def compile(self, state: TrainState, data: Dataset, epochs: int = 1) -> None:
        """Compile ``run(state, data, epochs)`` now (``compile_seconds`` accumulates)."""
        state, arrays = self.place(state, data)
        self._program(_kind(state), epochs, state, arrays)

    def run(
        self, state: TrainState, data: Dataset | tuple, epochs: int = 1
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """``epochs`` epochs in one compiled call; returns the new state and the history.

        ``state`` is donated: its arrays are consumed. The history maps each of ``METRICS`` to
        an array with a leading axis ``epochs`` (after the run axis K when batched).
        """
        state, arrays = self.place(state, data)
        state, history = self._program(_kind(state), epochs, state, arrays)(state, arrays)
        return state, history


def _kind(state: TrainState) -> str:
    return "batched" if jnp.ndim(state.epoch) == 1 else "single"


def device_data(data: Dataset | tuple) -> tuple[jax.Array, ...]:
    """The four arrays of ``data`` on the device. ``Trainer.run`` takes them as they are, so a
    loop calling it epoch by epoch pays for the copy once."""
    arrays = data.arrays() if isinstance(data, Dataset) else data
    return tuple(a if isinstance(a, jax.Array) else jax.device_put(a) for a in arrays)
