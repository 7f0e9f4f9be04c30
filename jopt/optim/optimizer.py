"""``jopt.optim.Optimizer``: torch.optim's interface over jopt's functional optimizers.

A facade class maps torch's constructor onto a functional optimizer (``jopt.adam``, ...) and
holds no arithmetic of its own. What it adds is torch's way of driving one:

- ``params`` is a pytree, a list of param groups ``[{"params": tree, "lr": ...}, ...]`` or a
  ``flax.nnx.Module`` (its ``nnx.Param`` state is optimized and written back after each step);
- ``step(grads)``, ``step(loss_fn, *args)`` (value-and-grad and update in one jitted call), and
  ``zero_grad(); backward(loss_fn, *args); step()`` with gradients accumulating;
- ``param_groups`` whose hyperparameters are read at every step as data: changing ``lr`` (by
  hand or by a scheduler) never recompiles;
- ``state_dict()`` / ``load_state_dict()`` in torch's layout, so optimizer state moves between
  torch and jopt.

Inside, each group is one flat buffer per dtype (:mod:`jopt.optim.flat`), so a step over many
small leaves is a few fused kernels, with parameters and state donated to XLA.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jopt.core import GradientTransformation, apply_updates
from jopt.optim.flat import Flat, Layout
from jopt.optim.state_layout import from_torch, plain, torch_view, transplant

__all__ = ["Optimizer"]


class Optimizer:
    """Base class of the facade optimizers; subclasses set ``functional``.

    ``functional`` is a jopt optimizer factory whose keyword arguments are torch's
    hyperparameter names. Group entries it does not take (``foreach``, ``fused``, ...) are kept
    in ``param_groups`` and ``state_dict`` for torch compatibility and otherwise ignored: XLA
    fuses the step whatever they say.
    """

    functional: Callable[..., GradientTransformation]

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self._layouts: list[Layout] = []
        self._flat: list[Flat] = []
        self._states: list[Any] = []
        self._args: list[tuple[Any, ...] | None] = []  # per group: (snapshot, static, arrays)
        self._owned: dict[int, weakref.ref] = {}
        self._grad: list[Flat] | None = None
        self._scratch: list[Flat] | None = None  # see _grad_scratch
        self._compiled: dict[Any, Callable] = {}
        self._built: list[tuple[Any, ...]] = []  # each group's static arguments its state has
        self._traces = 0  # how many times a step was traced (= compiled); read by tests
        self._params_cache: Any = None

        self._module: nnx.Module | None = None
        if isinstance(params, nnx.Module):
            self._module = params
            self._graphdef, tree = nnx.split(params, nnx.Param, ...)[:2]
            groups, self._grouped = [{"params": tree}], False
        elif _is_group_list(params):
            groups, self._grouped = list(params), True
        else:
            groups, self._grouped = [{"params": params}], False
        for group in groups:
            self.add_param_group(group)

    # ---------------------------------------------------------------------------------------
    # Groups and hyperparameters
    # ---------------------------------------------------------------------------------------

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        keys = cls.__dict__.get("_functional_keys")
        if keys is None:
            keys = tuple(inspect.signature(cls.functional).parameters)
            cls._functional_keys = keys
        return keys

    def _split(self, group: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(static, dynamic) functional arguments of a group.

        Booleans are static, and so is a ``static_when_zero`` argument (``momentum``,
        ``weight_decay``) while it is 0: torch skips those terms at 0, and as data they would
        still cost a buffer or a read of the weights (SGD(momentum=0.9) on 10M float32
        parameters ran 3x slower with a zero decay as data). Changing one from 0 rebuilds the
        group's step once. Everything else is data.
        """
        zero_static = getattr(self.functional, "static_when_zero", ())
        static, dynamic = {}, {}
        for key in self._keys():
            value = group[key]
            if isinstance(value, bool) or (key in zero_static and value == 0):
                static[key] = value
            else:
                dynamic[key] = value
        return static, dynamic

    def _group_args(self, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(static items, hyperparameter arrays) of a group, re-made only when a value changed.

        Called at every step, so the common case is one tuple comparison.
        """
        group = self.param_groups[index]
        snapshot = tuple(_hashable(group[k]) for k in self._keys())
        cached = self._args[index]
        if cached is None or cached[0] != snapshot:
            static, dynamic = self._split(group)
            arrays = jax.tree.map(lambda v: jnp.asarray(float(v)), dynamic)
            cached = (snapshot, tuple(sorted(static.items())), arrays)
            self._args[index] = cached
        return cached[1], cached[2]

    def _transform(self, index: int, hyperparams: dict[str, Any]) -> GradientTransformation:
        static, _ = self._group_args(index)
        return self.functional(**dict(static), **hyperparams)

    def _prepare(self) -> tuple[tuple[Any, ...], list[dict[str, Any]]]:
        """Every group's static arguments and hyperparameter arrays for the next step.

        A group whose static arguments changed (torch: momentum 0 -> 0.9) gets its state
        rebuilt: the parts the new chain still has (same state type) are kept, a new part
        starts fresh, as torch creates a missing buffer at the next step.
        """
        statics, hps = [], []
        for i in range(len(self.param_groups)):
            static, arrays = self._group_args(i)
            if static != self._built[i]:
                template = self._transform(i, arrays).init(self._flat[i])
                self._states[i] = transplant(self._states[i], template)
                self._built[i] = static
            statics.append(static)
            hps.append(arrays)
        return tuple(statics), hps

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, with its own hyperparameters (torch's semantics)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = dict(param_group)
        tree = group.pop("params")
        leaves = jax.tree.leaves(tree)
        if not leaves:
            raise ValueError("optimizer got an empty parameter list")
        for leaf in leaves:
            ref = self._owned.get(id(leaf))
            if ref is not None and ref() is leaf:
                raise ValueError("some parameters appear in more than one parameter group")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.functional(**{k: group[k] for k in self._keys()})  # torch's ValueErrors

        layout = Layout(tree)
        for leaf in leaves:
            with contextlib.suppress(TypeError):  # NumPy arrays: no identity to track
                self._owned[id(leaf)] = weakref.ref(leaf)
        index = len(self.param_groups)
        self.param_groups.append(group)
        # Given one tree, the user sees one tree; once there are several groups, a list of them.
        self._grouped = self._grouped or index > 0
        self._layouts.append(layout)
        self._args.append(None)
        static, arrays = self._group_args(index)
        self._built.append(static)
        self._flat.append(jax.jit(layout.flatten)(tree))
        self._states.append(self._transform(index, arrays).init(self._flat[-1]))
        self._grad = None
        self._scratch = None
        self._params_cache = None
        layouts = tuple(self._layouts)
        self._unflatten = jax.jit(
            lambda flats: [lay.unflatten(f) for lay, f in zip(layouts, flats)]
        )

    # ---------------------------------------------------------------------------------------
    # Parameters as the user sees them
    # ---------------------------------------------------------------------------------------

    def _view(self, flats: list[Flat], rest: Any = None) -> Any:
        """The parameters in the structure given: a tree, a list of trees, or a module."""
        trees = [layout.unflatten(flat) for layout, flat in zip(self._layouts, flats)]
        if self._module is not None:
            return nnx.merge(self._graphdef, trees[0], rest)
        return trees if self._grouped else trees[0]

    @property
    def params(self) -> Any:
        """The current parameters in the structure given (the ``nnx.Param`` state for a module)."""
        if self._params_cache is None:
            trees = self._unflatten(self._flat)
            self._params_cache = trees if self._grouped else trees[0]
        return self._params_cache

    def _sync_module(self) -> None:
        self._params_cache = None
        if self._module is not None:
            nnx.update(self._module, self.params)

    # ---------------------------------------------------------------------------------------
    # Steps
    # ---------------------------------------------------------------------------------------

    def _update(self, flats: list[Flat], states: list[Any], grads: list[Flat], hps: list[Any]):
        """One optimizer step of every group (traced)."""
        new_flats, new_states = [], []
        for i, (flat, state, grad, hp) in enumerate(zip(flats, states, grads, hps)):
            updates, state = self._transform(i, hp).update(grad, state, flat)
            new_flats.append(apply_updates(flat, updates))
            new_states.append(state)
        return new_flats, new_states

    def _loss_and_grads(self, loss_fn: Callable, has_aux: bool, flats, rest, args, kwargs):
        def objective(flats: list[Flat]) -> Any:
            return loss_fn(self._view(flats, rest), *args, **kwargs)

        return jax.value_and_grad(objective, has_aux=has_aux)(flats)

    def _compile(
        self, kind: str, statics: tuple[Any, ...], loss_fn: Callable | None = None, has_aux=False
    ) -> Callable:
        key = (kind, loss_fn, has_aux, statics, len(self._layouts))
        if key in self._compiled:
            return self._compiled[key]

        def with_grads(flats, states, hps, grad_leaves, scratch):
            self._traces += 1
            grads = [lay.flatten_leaves(g) for lay, g in zip(self._layouts, grad_leaves)]
            new_flats, new_states = self._update(flats, states, grads, hps)
            # The concatenated gradients go out into the donated scratch buffers' memory.
            return new_flats, new_states, [{k: g[k] for k in s} for g, s in zip(grads, scratch)]

        def with_flat_grads(flats, states, hps, grads):
            self._traces += 1
            return self._update(flats, states, grads, hps)

        def closure(flats, states, hps, rest, args, kwargs):
            self._traces += 1
            loss, grads = self._loss_and_grads(loss_fn, has_aux, flats, rest, args, kwargs)
            return (loss, *self._update(flats, states, grads, hps))

        def backward(flats, acc, rest, args, kwargs):
            self._traces += 1
            loss, grads = self._loss_and_grads(loss_fn, has_aux, flats, rest, args, kwargs)
            if acc is not None:
                grads = jax.tree.map(jnp.add, acc, grads)
            return loss, grads

        fn = {
            "grads": jax.jit(with_grads, donate_argnums=(0, 1, 4), keep_unused=True),
            "flat_grads": jax.jit(with_flat_grads, donate_argnums=(0, 1)),
            "closure": jax.jit(closure, donate_argnums=(0, 1)),
            "backward": jax.jit(backward, donate_argnums=(1,)),
        }[kind]
        self._compiled[key] = fn
        return fn

    def step(self, closure: Any = None, *args: Any, has_aux: bool = False, **kwargs: Any) -> Any:
        """Apply one update.

        - ``step(grads)``: ``grads`` has the structure of the parameters;
        - ``step(loss_fn, *args, **kwargs)``: differentiate ``loss_fn(params, *args, **kwargs)``
          and update in one jitted call; returns the loss (and aux with ``has_aux=True``);
        - ``step()``: use the gradients accumulated by :meth:`backward` (a no-op if none, as
          torch skips parameters without ``.grad``).
        """
        if closure is None and self._grad is None:
            return None
        statics, hps = self._prepare()
        result = None
        if callable(closure):
            fn = self._compile("closure", statics, closure, has_aux)
            result, self._flat, self._states = fn(
                self._flat, self._states, hps, self._rest_state(), args, kwargs
            )
        elif closure is not None:
            grads = [closure] if not self._grouped else list(closure)
            if self._grouped and len(grads) != len(self._layouts):
                raise ValueError(
                    f"expected gradients for {len(self._layouts)} parameter groups, "
                    f"got {len(grads)}"
                )
            leaves = [layout.leaves_of(grad) for layout, grad in zip(self._layouts, grads)]
            fn = self._compile("grads", statics)
            self._flat, self._states, self._scratch = fn(
                self._flat, self._states, hps, leaves, self._grad_scratch()
            )
        else:
            grads, self._grad = self._grad, None
            fn = self._compile("flat_grads", statics)
            self._flat, self._states = fn(self._flat, self._states, hps, grads)
        self._sync_module()
        return result

    def _grad_scratch(self) -> list[Flat]:
        """Per group, a buffer for each bucket whose gradients ``step(grads)`` concatenates.

        Donated to the step and returned by it, it is the memory the concatenation writes to:
        without it, every step would allocate a fresh buffer of the bucket's size, and on CPU
        the first touch of fresh pages costs about as much as the optimizer step itself.
        """
        if self._scratch is None:
            self._scratch = [
                {k: jnp.zeros(lay.sizes[k], lay.dtypes[k]) for k in lay.concatenated}
                for lay in self._layouts
            ]
        return self._scratch

    def backward(self, loss_fn: Callable, *args: Any, has_aux: bool = False, **kwargs: Any) -> Any:
        """Add the gradient of ``loss_fn(params, *args, **kwargs)`` to the accumulated one.

        torch's ``loss.backward()``: gradients add up until :meth:`zero_grad`. Returns the loss.
        """
        fn = self._compile("backward", (), loss_fn, has_aux)
        loss, self._grad = fn(self._flat, self._grad, self._rest_state(), args, kwargs)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the accumulated gradients (torch's default ``set_to_none=True``)."""
        if set_to_none or self._grad is None:
            self._grad = None
        else:
            self._grad = jax.tree.map(jnp.zeros_like, self._grad)

    def _rest_state(self) -> Any:
        if self._module is None:
            return None
        return nnx.state(self._module, nnx.Not(nnx.Param))

    # ---------------------------------------------------------------------------------------
    # torch's state_dict
    # ---------------------------------------------------------------------------------------

    @property
    def state(self) -> dict[int, dict[str, Any]]:
        """Per-parameter state, keyed by parameter index: ``state_dict()["state"]``."""
        return self.state_dict()["state"]

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``{"state": {index: {name: value}}, "param_groups": [...]}``.

        Indices number the flattened leaves, group after group; state names are torch's
        (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``,
        ``square_avg``, ``grad_avg``, ``sum``). A parameter that has not stepped has no entry.
        """
        state: dict[int, dict[str, Any]] = {}
        groups = []
        start = 0
        for layout, group, group_state in zip(self._layouts, self.param_groups, self._states):
            step, buffers = torch_view(group_state, layout)
            if buffers or step:
                split = {name: layout.unflatten_leaves(buf) for name, buf in buffers.items()}
                for j in range(len(layout)):
                    entry: dict[str, Any] = {}
                    if step is not None:
                        entry["step"] = jnp.asarray(step, jnp.float32)
                    entry.update({name: leaves[j] for name, leaves in split.items()})
                    state[start + j] = entry
            groups.append({**group, "params": list(range(start, start + len(layout)))})
            start += len(layout)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict made by :meth:`state_dict` or by ``torch.optim`` (same layout)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for saved, layout in zip(saved_groups, self._layouts):
            if len(saved["params"]) != len(layout):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    "of optimizer's group"
                )
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        for i, (saved, layout) in enumerate(zip(saved_groups, self._layouts)):
            self.param_groups[i] = {k: plain(v) for k, v in saved.items() if k != "params"}
            entries = [saved_state.get(int(p), {}) for p in saved["params"]]
            static, arrays = self._group_args(i)
            template = self._transform(i, arrays).init(self._flat[i])
            self._states[i] = from_torch(template, entries, layout)
            self._built[i] = static
        self._grad = None


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def _is_group_list(params: Any) -> bool:
    return (
        isinstance(params, list | tuple)
        and len(params) > 0
        and all(isinstance(g, dict) and "params" in g for g in params)
    )


def _hashable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return tuple(_hashable(v) for v in value)
    return float(value)
