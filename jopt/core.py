"""The functional core: the optax protocol, hyperparameters as data, tree checks.

A transformation is optax's ``GradientTransformation``: a ``NamedTuple(init, update)`` with
``init(params) -> state`` and ``update(updates, state, params=None, **extra) -> (updates, state)``.
jopt uses optax's own protocol types, ``chain`` and ``apply_updates`` (behind a shape check)
rather than copies of them, so a jopt transformation *is* an optax transformation: it drops into
``optax.chain``, flax's ``TrainState`` and ``nnx.Optimizer``, and optax's transforms drop into
``jopt.chain``.

What jopt adds here is ``inject_hyperparams`` with torch's conventions (every float
hyperparameter, ``betas`` included, lives in ``state.hyperparams`` under torch's name) and the
checks that make a mismatched gradient tree fail with the path that differs.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import optax
from optax import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    chain,
    identity,
)

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "FactorySpec",
    "InjectHyperparamsState",
    "Schedule",
    "apply_updates",
    "chain",
    "check_tree_match",
    "declare",
    "identity",
    "inject_hyperparams",
    "spec_of",
]

Schedule = Callable[[jax.Array], jax.Array]
"""A learning-rate (or any hyperparameter) schedule: ``step -> value``, pure and jittable."""


F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class FactorySpec:
    """What an optimizer factory declares to :func:`inject_hyperparams` and the facade.

    - ``static_when_zero``: arguments whose term torch skips at 0 (``momentum``,
      ``weight_decay``); left at a default of 0 they stay static, so the step keeps no momentum
      buffer and reads no weights for decay.
    - ``static``: integer arguments that shape the computation (Muon's ``ns_steps``).
    - ``leafwise``: the rule reads each parameter's shape (Muon, Adafactor), so the facade
      gives it the leaves, not a flat buffer.
    """

    static_when_zero: tuple[str, ...] = ()
    static: tuple[str, ...] = ()
    leafwise: bool = False


def declare(
    *, static_when_zero: Iterable[str] = (), static: Iterable[str] = (), leafwise: bool = False
) -> Callable[[F], F]:
    """Attach a :class:`FactorySpec` to a factory: ``@declare(static_when_zero=("weight_decay",))``.

    Every name must be an argument of the factory, so a misspelt declaration fails at import.
    """
    spec = FactorySpec(tuple(static_when_zero), tuple(static), leafwise)

    def attach(factory: F) -> F:
        names = set(inspect.signature(factory).parameters)
        unknown = sorted((set(spec.static_when_zero) | set(spec.static)) - names)
        if unknown:
            raise TypeError(f"{factory.__name__} declares arguments it does not take: {unknown}")
        factory.__jopt_spec__ = spec  # type: ignore[attr-defined]
        return factory

    return attach


def spec_of(factory: Callable[..., Any]) -> FactorySpec:
    """The spec ``factory`` declared with :func:`declare` (an empty one for others, optax's)."""
    return getattr(factory, "__jopt_spec__", FactorySpec())


def is_concrete(x: Any) -> bool:
    """True when ``x`` is a known value (not a tracer), so Python may branch on it."""
    return not isinstance(x, jax.core.Tracer) and not callable(x)


def is_zero(x: Any) -> bool:
    """True only for a Python (or NumPy) number equal to 0; an array is never 'zero'.

    Optimizers use it to leave out a term (``weight_decay == 0``) or a state buffer
    (``momentum == 0``) exactly where torch leaves it out. Arrays are data that may change
    between steps (``inject_hyperparams``), so they always keep their term: the tree of the
    state must not depend on a value.
    """
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x == 0


def chain_present(*transforms: GradientTransformation | None) -> GradientTransformationExtraArgs:
    """``chain`` that skips ``None``: optimizers list optional terms inline."""
    return chain(*(t for t in transforms if t is not None))


# --------------------------------------------------------------------------------------------
# Tree checks
# --------------------------------------------------------------------------------------------


def _describe(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        jax.tree_util.keystr(path): (jnp.shape(leaf), jnp.result_type(leaf))
        for path, leaf in leaves
    }


def check_tree_match(
    tree: Any, reference: Any, *, what: str = "gradients", against: str = "parameters"
) -> None:
    """Raise ``ValueError`` naming the first path where ``tree`` and ``reference`` differ.

    Structure and shapes are static under ``jit``, so the check costs nothing at run time.
    """
    if jax.tree.structure(tree) == jax.tree.structure(reference) and all(
        jnp.shape(a) == jnp.shape(b)
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference))
    ):
        return
    got, want = _describe(tree), _describe(reference)
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:5])}")
        raise ValueError(
            f"The {what} do not match the {against}: {'; '.join(parts)} "
            f"({len(got)} leaves against {len(want)})."
        )
    for key, (shape, _) in want.items():
        if got[key][0] != shape:
            raise ValueError(
                f"The {what} do not match the {against} at {key or '<root>'}: "
                f"shape {got[key][0]} where the {against} have {shape}."
            )
    raise ValueError(  # Same leaves and shapes, different containers (e.g. list vs tuple).
        f"The {what} do not match the {against}: tree structure "
        f"{jax.tree.structure(tree)} where the {against} have {jax.tree.structure(reference)}."
    )


def apply_updates(params: Any, updates: Any) -> Any:
    """``optax.apply_updates``: ``p + u`` in each parameter's dtype.

    The updates are first checked against the parameters (free under ``jit``): an update of
    the wrong shape would otherwise broadcast into its parameter without a word.
    """
    if not any(u is None for u in jax.tree.leaves(updates, is_leaf=lambda x: x is None)):
        check_tree_match(updates, params, what="updates")
    return optax.apply_updates(params, updates)


# --------------------------------------------------------------------------------------------
# Hyperparameters as data
# --------------------------------------------------------------------------------------------


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`: the step count, the hyperparameters, the inner state."""

    count: jax.Array
    hyperparams: dict[str, Any]
    inner_state: Any


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real | jax.Array) and not isinstance(x, bool)


def _is_injectable(x: Any) -> bool:
    """Floats, arrays, schedules, and tuples of them (torch's ``betas``)."""
    if isinstance(x, tuple):
        return len(x) > 0 and all(_is_number(v) or callable(v) for v in x)
    return _is_number(x) or callable(x)


def _as_array(x: Any, dtype: Any) -> jax.Array:
    # A weakly typed scalar (what jnp.asarray makes of a Python float) keeps the jitted step's
    # signature when the user later assigns a plain float: no recompilation.
    if dtype is None and isinstance(x, numbers.Real):
        return jnp.asarray(float(x))
    return jnp.asarray(x, dtype=dtype)


def inject_hyperparams(
    factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """Make the float hyperparameters of ``factory`` data held in the optimizer state.

    ``inject_hyperparams(jopt.adam)(lr=1e-3)`` builds an optimizer whose
    ``state.hyperparams`` is ``{"lr": ..., "betas": (..., ...), "eps": ..., "weight_decay": ...}``
    — every float argument of ``factory`` under torch's name, defaults included. Assigning
    ``state.hyperparams["lr"] = 0.01`` between calls of a jitted step takes effect at the next
    step without recompiling, and a batch of states can be ``vmap``-ped over. A callable
    argument is a schedule ``step -> value``, evaluated at the wrapper's own step count; its
    current value is what ``state.hyperparams`` shows.

    Booleans and strings stay static, and so do ``static_args`` and the arguments the factory
    declares ``static`` (:func:`declare`; Muon's ``ns_steps``, a number of iterations). Its
    ``static_when_zero`` arguments (``momentum``, ``weight_decay``) left at a default of 0 stay
    static, so the step keeps no momentum buffer and reads no weights for decay — as in torch,
    which skips both terms at 0. Passed explicitly, even as 0, they are data that may change
    later.

    Construction calls ``factory`` once with the given values, so bad hyperparameters raise
    torch's ``ValueError`` immediately.
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    spec = spec_of(factory)
    static |= set(spec.static)  # integers that shape the computation
    signature = inspect.signature(factory)

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformationExtraArgs:
        bound = signature.bind(*args, **kwargs)
        given = set(bound.arguments)
        bound.apply_defaults()
        # A list of numbers is torch's spelling of a tuple (``betas=[0.9, 0.999]``).
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in bound.arguments.items()}
        zero_static = {
            k
            for k in spec.static_when_zero
            if k not in given and is_zero(values.get(k))
        }
        dynamic = {
            k: v
            for k, v in values.items()
            if k not in static and k not in zero_static and _is_injectable(v)
        }
        fixed = {k: v for k, v in values.items() if k not in dynamic}
        # Validate now, in torch's words, with the concrete values.
        factory(**{**fixed, **{k: _initial(v) for k, v in dynamic.items()}})

        def current(count: jax.Array, hyperparams: dict[str, Any]) -> dict[str, Any]:
            def evaluate(spec: Any, held: Any) -> Any:
                return _scheduled(spec, count, hyperparam_dtype) if callable(spec) else held

            out = {}
            for k, spec in dynamic.items():
                if isinstance(spec, tuple):
                    out[k] = tuple(evaluate(s, h) for s, h in zip(spec, hyperparams[k]))
                else:
                    out[k] = evaluate(spec, hyperparams[k])
            return out

        def init(params: Any) -> InjectHyperparamsState:
            count = jnp.zeros([], jnp.int32)
            hyperparams = _initial_tree(dynamic, count, hyperparam_dtype)
            inner = factory(**fixed, **hyperparams)
            return InjectHyperparamsState(count, hyperparams, inner.init(params))

        def update(
            updates: Any, state: InjectHyperparamsState, params: Any = None, **extra: Any
        ) -> tuple[Any, InjectHyperparamsState]:
            _check_assigned(state.hyperparams, dynamic, zero_static, factory)
            hyperparams = current(state.count, state.hyperparams)
            inner = factory(**fixed, **hyperparams)
            if isinstance(inner, GradientTransformationExtraArgs):
                updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
            else:
                updates, inner_state = inner.update(updates, state.inner_state, params)
            count = optax.safe_increment(state.count)
            return updates, InjectHyperparamsState(count, hyperparams, inner_state)

        return GradientTransformationExtraArgs(init, update)

    wrapped.__doc__ = factory.__doc__
    wrapped.__name__ = getattr(factory, "__name__", "wrapped")
    wrapped.__signature__ = signature  # type: ignore[attr-defined]
    return wrapped


def _check_assigned(
    assigned: dict[str, Any], dynamic: dict[str, Any], zero_static: set[str], factory: Callable
) -> None:
    """Refuse a hyperparameter assigned where the step does not read it (the keys are the
    state's structure, so this costs nothing under ``jit``)."""
    for key in sorted(set(assigned) - set(dynamic)):
        if key in zero_static:
            why = (
                f"{key} was left at its default of 0, so the term is left out, as torch does; "
                f"pass {key}=0.0 explicitly to inject_hyperparams({factory.__name__}) to make "
                "it data"
            )
        else:
            why = f"{key} is static (fixed when the optimizer is built) or not an argument"
        raise ValueError(f"state.hyperparams[{key!r}] has no effect on this optimizer: {why}")
    missing = sorted(set(dynamic) - set(assigned))
    if missing:
        raise ValueError(f"state.hyperparams lacks {missing}: the optimizer reads them")


def _initial(spec: Any) -> Any:
    """The value a hyperparameter starts at: a schedule's value at step 0."""
    if isinstance(spec, tuple):
        return tuple(_initial(s) for s in spec)
    return spec(0) if callable(spec) else spec


def _scheduled(spec: Callable[[jax.Array], Any], count: jax.Array, dtype: Any) -> jax.Array:
    """A schedule's value as a strongly typed float array.

    The type must not depend on whether ``count`` is concrete (in ``init``) or traced (in a
    jitted ``update``): ``0.9 ** count`` is weakly typed for a concrete count and not for a
    traced one, and a state whose types change after the first step recompiles the step.
    """
    return jnp.asarray(spec(count), dtype=dtype or jnp.result_type(float))


def _initial_tree(dynamic: dict[str, Any], count: jax.Array, dtype: Any) -> dict[str, Any]:
    def first(spec: Any) -> Any:
        return _scheduled(spec, count, dtype) if callable(spec) else _as_array(spec, dtype)

    return {
        k: tuple(first(s) for s in v) if isinstance(v, tuple) else first(v)
        for k, v in dynamic.items()
    }
