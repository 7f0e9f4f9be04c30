"""``jopt.optim.Optimizer``: torch.optim's interface over jopt's functional optimizers.

A facade class maps torch's constructor onto a functional optimizer (``jopt.adam``, ...) and
holds no arithmetic of its own. What it adds is torch's way of driving one:

- ``params``: a tree of arrays, an ``nnx.Module``, ``named_parameters(module)``, or param groups
  of any of those. Parameters given as ``nnx.Variable`` are shared with their module, as torch's
  are: read before each step, written after it (:mod:`jopt.optim.params`).
- ``step(loss_fn, *args)`` (value-and-grad and update in one jitted call), ``zero_grad();
  backward(loss_fn, *args); step()`` with gradients accumulating in :attr:`grads`,
  ``step(grads)``, and torch's zero-argument ``step(closure)``. nnx modules among the arguments
  are carried through the call, their non-parameter state written back (:mod:`.lifting`).
- ``param_groups`` whose hyperparameters are data: changing ``lr`` never recompiles.
- ``state_dict()`` / ``load_state_dict()`` in torch's layout, with ``param_names``.
- ``prune(mask)``: ``torch.nn.utils.prune`` on the parameters, pruned entries held at zero.

Inside, each group is one flat buffer per dtype (:mod:`jopt.flat`), so the update over many
small leaves is a few fused kernels, with parameters and state donated to XLA. The loss is
differentiated with respect to the leaves and the gradient concatenated, so a step costs time
linear in the number of leaves.

The class is here: construction, groups and hyperparameters, the parameters and gradients as
the user sees them, and the step methods. A group's storage is :mod:`.group`, the compiled
programs (and the modules they carry) :mod:`.programs`, torch's state dict :mod:`.state_dict`,
pruning the parameters :mod:`.pruning`.
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

from jopt.core import GradientTransformation, spec_of
from jopt.flat import Flat, Layout
from jopt.optim import state_layout
from jopt.optim.group import Group, as_float, flatten, hashable
from jopt.optim.lifting import Binding, FnKey, get_value, set_value
from jopt.optim.params import groups_of, is_group_list, is_sparse, source_of, warn_duplicates
from jopt.optim.programs import Programs, RecompileWarning
from jopt.optim.pruning import Pruning
from jopt.optim.state_dict import StateDict
from jopt.sharding import init_sharded

__all__ = ["Optimizer", "RecompileWarning", "check_kernel_flags", "takes_no_arguments"]


class Optimizer(Programs, Pruning, StateDict):
    """Base class of the facade optimizers; subclasses set ``functional``.

    ``functional`` is a jopt optimizer factory whose keyword arguments are torch's
    hyperparameter names. Group entries it does not take (``foreach``, ``fused``, ...) are kept
    in ``param_groups`` and ``state_dict`` for torch compatibility and otherwise ignored: XLA
    fuses the step whatever they say.
    """

    functional: Callable[..., GradientTransformation]

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        # torch checks the hyperparameters before it looks at the parameters.
        self.functional(**{k: self.defaults[k] for k in self._keys()})
        self.param_groups: list[dict[str, Any]] = []
        self._groups: list[Group] = []
        self._owner: dict[int, weakref.ref] = {}  # id of a parameter (array, Variable) -> it
        self._where: dict[int, tuple[int, int]] = {}  # id of a shared Variable -> (group, leaf)
        self._grad: list[Flat] | None = None
        self._scratch: list[Flat] | None = None
        self._programs: dict[Any, Callable] = {}
        self._last_program: tuple[Any, ...] | None = None
        self._compiles = 0
        self._loss_fns: set[FnKey] = set()
        self._warned = False
        self._bindings: dict[int, tuple[weakref.ref, Binding]] = {}
        self._tokens: dict[Any, int] = {}
        self._params_cache: Any = None
        groups = groups_of(params)
        self._module: nnx.Module | None = params if isinstance(params, nnx.Module) else None
        self._grouped = len(groups) > 1 or is_group_list(params)
        self._views_fn: Callable | None = None
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

        Booleans, strings, None (and tuples holding one, Adafactor's ``eps``) and the
        arguments the factory declares ``static`` (Muon's ``ns_steps``; :func:`jopt.declare`)
        are static, and so is a declared ``static_when_zero`` argument (``momentum``,
        ``weight_decay``) while it is 0: torch skips those terms at 0, and as data they would
        still cost a buffer or a read of the weights (SGD(momentum=0.9) on 10M float32
        parameters ran 3x slower with a zero decay as data). Changing one from 0 rebuilds the
        group's step once. Everything else is data.
        """
        spec = spec_of(self.functional)
        static, dynamic = {}, {}
        for key in self._keys():
            value = group[key]
            if (
                key in spec.static
                or isinstance(value, bool | str | None)
                or (isinstance(value, tuple) and any(v is None for v in value))
                or (key in spec.static_when_zero and value == 0)
            ):
                static[key] = value
            else:
                dynamic[key] = value
        return static, dynamic

    def _group_args(self, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(static items, hyperparameter arrays) of a group, re-made only when a value changed.

        Called at every step, so the common case is one tuple comparison.
        """
        group, stored = self.param_groups[index], self._groups[index]
        cached = stored.args
        raw = tuple([group[k] for k in self._keys()])
        if cached is not None and cached[3] == raw:  # the common case: nothing changed
            return cached[1], cached[2]
        snapshot = tuple(hashable(v) for v in raw)
        if cached is None or cached[0] != snapshot:
            static, dynamic = self._split(group)
            arrays = jax.tree.map(lambda v: jnp.asarray(as_float(v)), dynamic)
            cached = (snapshot, tuple(sorted(static.items())), arrays, raw)
        stored.args = (*cached[:3], raw)
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
        for i, group in enumerate(self._groups):
            static, arrays = self._group_args(i)
            if static != group.built:
                template = self._transform(i, arrays).init(self._state_input(group))
                group.state = state_layout.transplant(group.state, template)
                group.built = static
            statics.append(static)
            hps.append(arrays)
        return tuple(statics), hps

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, with its own hyperparameters (torch's semantics)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = dict(param_group)
        source = source_of(group.pop("params"))
        if not source.leaves:
            raise ValueError("optimizer got an empty parameter list")
        warn_duplicates(source)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        if source.names is not None:
            group["param_names"] = list(source.names)
        if self.param_groups and ("param_names" in group) != (
            "param_names" in self.param_groups[0]
        ):
            with_names = "with names" if "param_names" in group else "without names"
            raise ValueError(
                "all optimizer param groups should be with/without names. "
                f"cannot add param group {with_names} to the optimizer"
            )
        identities = [
            v if v is not None else leaf for v, leaf in zip(source.variables, source.leaves)
        ]
        for obj in identities:
            ref = self._owner.get(id(obj))
            if ref is not None and ref() is obj:
                raise ValueError("some parameters appear in more than one parameter group")
        index = len(self.param_groups)
        sparse = [[index, j] for j, leaf in enumerate(source.leaves) if is_sparse(leaf)]
        if sparse:
            raise ValueError(
                f"Sparse params at indices {sparse}: {type(self).__name__} requires dense "
                "parameter tensors"
            )
        for leaf in source.leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                raise ValueError(
                    f"can't optimize a parameter of dtype {jnp.result_type(leaf)}: parameters "
                    "are floating point or complex, as torch's are"
                )
        self.functional(**{k: group[k] for k in self._keys()})  # torch's ValueErrors

        layout = Layout(source.leaves, source.paths)
        leafwise = spec_of(self.functional).leafwise
        if source.shared or leafwise:
            owned = [
                jnp.asarray(leaf) if v is None else None
                for v, leaf in zip(source.variables, source.leaves)
            ]
            stored = Group(source, layout, None, None, owned)
        else:
            stored = Group(source, layout, flatten(layout)(source.leaves), None, [])
        stored.offsets = layout.offsets()
        initial = source.leaves
        source.leaves = []  # the values live in the flat buffer or the Variables now
        self.param_groups.append(group)
        self._groups.append(stored)
        try:  # init checks the parameters as torch's constructor does (Muon: matrices only)
            static, arrays = self._group_args(index)
            stored.built = static
            first = list(map(jnp.asarray, initial)) if leafwise else flatten(layout)(initial)
            transform = self._transform(index, arrays)
            # sharded parameters: the state is made on their devices, split as they are
            sharded = bool(layout.shaped)
            stored.state = init_sharded(transform, first) if sharded else transform.init(first)
        except Exception:
            del self.param_groups[index], self._groups[index]
            raise
        for obj in identities:
            with contextlib.suppress(TypeError):  # NumPy arrays: no identity to track
                self._owner[id(obj)] = weakref.ref(obj)
        for i, v in enumerate(source.variables):
            if v is not None:
                self._where[id(v)] = (index, i)
        self._grouped = self._grouped or index > 0
        self._grad = self._scratch = self._params_cache = self._views_fn = None
        self._programs.clear()
        self._last_program = None
        self._bindings.clear()

    @property
    def _first(self) -> str:
        """What a loss function is given first: the module, the parameters, or nothing."""
        if self._module is not None:
            return "module"
        named = any(g.source.kind != "tree" and g.source.shared for g in self._groups)
        return "none" if named else "tree"

    # ---------------------------------------------------------------------------------------
    # Parameters and gradients as the user sees them
    # ---------------------------------------------------------------------------------------

    def _as_given(self, views: list[Any]) -> Any:
        """Per-group values as the user gave the groups: one tree, or a list of them."""
        return views if self._grouped else views[0]

    def _views(self, flats: list[Flat], offsets: list[list[Any]]) -> Any:
        return self._as_given(
            [
                g.source.view(g.layout.unflatten_leaves(f, o))
                for g, f, o in zip(self._groups, flats, offsets)
            ]
        )

    def _jit_views(self) -> Callable[[list[Flat], list[list[Any]]], Any]:
        """The jitted unflatten of every group's flat buffers into the structure given."""
        if self._views_fn is None:
            self._views_fn = jax.jit(self._views)
        return self._views_fn

    @property
    def params(self) -> Any:
        """The current parameters in the structure given (the ``nnx.Param`` state of a module,
        a list for named parameters, a list of group trees once there are several groups)."""
        if any(g.flat is None for g in self._groups):  # the Variables hold the values
            return self._as_given([g.source.view(self._values(g)) for g in self._groups])
        if self._params_cache is None:
            self._params_cache = self._jit_views()(self._flats(), self._offsets())
        return self._params_cache

    @property
    def grads(self) -> Any:
        """The gradients accumulated by :meth:`backward`, in the structure of :attr:`params`
        (None after :meth:`zero_grad`): torch's ``p.grad``. Assign to change them."""
        return None if self._grad is None else self._jit_views()(self._grad, self._offsets())

    @grads.setter
    def grads(self, value: Any) -> None:
        if value is None:
            self._grad = None
            return
        self._grad = self._flat_grads(value, "gradients")

    def _flat_grads(self, grads: Any, what: str) -> list[Flat]:
        leaves = self._leaves_of(grads, what)
        return [flatten(g.layout)(lv) for g, lv in zip(self._groups, leaves)]

    def _leaves_of(self, tree: Any, what: str) -> list[list[Any]]:
        trees = list(tree) if self._grouped else [tree]
        if len(trees) != len(self._groups):
            raise ValueError(
                f"expected {what} for {len(self._groups)} parameter groups, got {len(trees)}"
            )
        return [g.unview(t, what) for g, t in zip(self._groups, trees)]

    def _flats(self) -> list[Flat | None]:
        return [g.flat for g in self._groups]

    def _offsets(self) -> list[list[Any]]:
        return [g.offsets for g in self._groups]

    def _masks(self) -> list[Flat | None]:
        return [g.mask for g in self._groups]

    def _values(self, g: Group) -> list[Any]:
        """The current leaves of a shared group (torch: the optimizer and the model hold the
        same tensors, so what was written into a Variable is what the step starts from)."""
        values = [
            get_value(v) if v is not None else leaf for v, leaf in zip(g.source.variables, g.owned)
        ]
        if [getattr(v, "shape", None) for v in values] == g.layout.shapes:
            return values
        for i, value in enumerate(values):
            if tuple(jnp.shape(value)) != g.layout.shapes[i]:
                raise ValueError(
                    f"parameter {g.layout.names[i]} has shape {tuple(jnp.shape(value))}, "
                    f"where the optimizer has {g.layout.shapes[i]}"
                )
        return values

    def _leaf_params(self) -> list[list[Any] | None]:
        return [self._values(g) if g.flat is None else None for g in self._groups]

    def _state_input(self, g: Group) -> Flat | list[Any]:
        """What the group's state is over: its flat buffers, or its leaves for a rule that
        reads each parameter's shape (declared ``leafwise``: Muon, Adafactor)."""
        if spec_of(self.functional).leafwise:
            return self._values(g)
        return g.flat if g.flat is not None else flatten(g.layout)(self._values(g))

    def _store(self, flats: list[Any], leaves: list[Any], states: list[Any]) -> None:
        """Keep a step's results: flat buffers, or new values written into the Variables."""
        for g, flat, values, state in zip(self._groups, flats, leaves, states):
            g.state = state
            if g.flat is not None:
                g.flat = flat
                continue
            for i, (variable, value) in enumerate(zip(g.source.variables, values)):
                if variable is not None:
                    set_value(variable, value)
                else:
                    g.owned[i] = value
        self._params_cache = None

    # ---------------------------------------------------------------------------------------
    # Steps
    # ---------------------------------------------------------------------------------------

    def step(self, closure: Any = None, *args: Any, has_aux: bool = False, **kwargs: Any) -> Any:
        """Apply one update.

        - ``step(loss_fn, *args, **kwargs)``: differentiate ``loss_fn`` and update in one jitted
          call; returns the loss (``(loss, aux)`` with ``has_aux=True``). ``loss_fn`` receives
          the optimizer's module, or its parameters in the structure given, then ``args``; an
          optimizer over a module's Variables (:func:`named_parameters`, sub-modules in
          groups) prepends nothing: pass the module among ``args``;
        - ``step(closure)`` with a closure of no arguments: torch's idiom. The closure calls
          :meth:`zero_grad` and :meth:`backward` and returns the loss; the step uses the
          gradients it accumulated and returns the loss;
        - ``step(grads)``: ``grads`` has the structure of :attr:`params`;
        - ``step()``: use the gradients accumulated by :meth:`backward` (a no-op if none, as
          torch skips parameters without ``.grad``); they stay until :meth:`zero_grad`.
        """
        result = None
        if callable(closure) and not args and not kwargs and takes_no_arguments(closure):
            result = closure()
            closure = None
        if closure is None and self._grad is None:
            return result
        if callable(closure):
            fn, inputs, bindings = self._closure_call(closure, has_aux, args, kwargs)
            result, flats, leaves, states, carried = fn(*inputs)
            for b, values in zip(bindings, carried):
                b.write(values)
            self._store(flats, leaves, states)
            return result
        statics, hps = self._prepare()
        flats, leaves = self._flats(), self._leaf_params()
        offsets, states = self._offsets(), [g.state for g in self._groups]
        if closure is not None:
            grad_leaves = self._leaves_of(closure, "gradients")
            fn = self._program("grads", statics)
            flats, leaves, states, self._scratch = fn(
                flats, leaves, offsets, states, hps, self._masks(), grad_leaves,
                self._grad_scratch(),
            )
        else:
            grads = self._grad  # kept, as torch keeps .grad until zero_grad()
            fn = self._program("flat_grads", statics)
            flats, leaves, states = fn(flats, leaves, offsets, states, hps, self._masks(), grads)
        self._store(flats, leaves, states)
        return result

    def lower_step(self, loss_fn: Callable, *args: Any, has_aux: bool = False, **kwargs: Any):
        """The lowered program that ``step(loss_fn, *args, **kwargs)`` runs, without running it:
        ``.as_text()`` is its StableHLO, ``.compile().cost_analysis()`` what XLA makes of it."""
        fn, inputs, _ = self._closure_call(loss_fn, has_aux, args, kwargs)
        return fn.lower(*inputs)

    def _closure_call(
        self, loss_fn: Callable, has_aux: bool, args: tuple, kwargs: dict
    ) -> tuple[Callable, tuple, list[Binding]]:
        """The program of ``step(loss_fn, *args, **kwargs)``, its inputs and the bindings of
        the modules among the arguments."""
        statics, hps = self._prepare()
        bindings, args, kwargs = self._lift(args, kwargs)
        fn = self._program("closure", statics, loss_fn, has_aux, bindings)
        states = [g.state for g in self._groups]
        carried = [b.inputs() for b in bindings]
        inputs = (self._flats(), self._leaf_params(), self._offsets(), states, hps, self._masks())
        return fn, (*inputs, carried, args, kwargs), bindings

    def _grad_scratch(self) -> list[Flat]:
        """Per group, a buffer for each bucket whose gradients ``step(grads)`` concatenates.

        Donated to the step and returned by it, it is the memory the concatenation writes to:
        without it, every step would allocate a fresh buffer of the bucket's size, and on CPU
        the first touch of fresh pages costs about as much as the optimizer step itself.
        """
        if self._scratch is None:
            self._scratch = [
                {k: jnp.zeros(g.layout.sizes[k], g.layout.dtypes[k]) for k in g.layout.concatenated}
                for g in self._groups
            ]
        return self._scratch

    def backward(self, loss_fn: Callable, *args: Any, has_aux: bool = False, **kwargs: Any) -> Any:
        """Add the gradient of ``loss_fn`` (the arguments as for :meth:`step`) to :attr:`grads`.

        torch's ``loss.backward()``: gradients add up until :meth:`zero_grad`. Returns the loss.
        """
        bindings, args, kwargs = self._lift(args, kwargs)
        kind = "backward" if self._grad is None else "backward+"
        fn = self._program("backward", (kind,), loss_fn, has_aux, bindings)
        carried = [b.inputs() for b in bindings]
        loss, self._grad, carried = fn(
            self._flats(), self._leaf_params(), self._offsets(), self._masks(), self._grad,
            carried, args, kwargs,
        )
        for b, values in zip(bindings, carried):
            b.write(values)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the accumulated gradients (torch's default ``set_to_none=True``)."""
        if set_to_none or self._grad is None:
            self._grad = None
        else:
            self._grad = jax.tree.map(jnp.zeros_like, self._grad)


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def check_kernel_flags(fused: bool | None, foreach: bool | None, differentiable: bool) -> None:
    """torch's refusals of ``fused`` with ``differentiable`` or ``foreach``, which its
    constructors make once the parameters are in (SGD, Adam, AdamW, Adagrad). The flags only
    choose torch's kernels: XLA compiles one program whatever they say."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def takes_no_arguments(fn: Callable) -> bool:
    """Whether ``fn`` can be called with no arguments: torch's ``step(closure)``."""
    try:
        inspect.signature(fn).bind()
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): not torch's closure
        return False
    return True
