"""torch's optimizer state layout, read from and written into jopt's chain states.

torch keeps per-parameter state under fixed names (``step``, ``exp_avg``, ``momentum_buffer``,
...). Each jopt state type that holds such buffers *declares* them here (:func:`declare`): which
fields are torch's per-parameter buffers, which field is torch's ``step``, and whether torch has
the buffers yet (SGD's momentum buffer is created at the first step). A state type that holds
per-parameter buffers and has no declaration is refused, so a new optimizer cannot silently
lose state in a ``state_dict``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.flat import Layout
from jopt.transforms import (
    EmaMomentumState,
    ScaleByAdadeltaState,
    ScaleByAdafactorState,
    ScaleByAdagradState,
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByAsgdState,
    ScaleByNadamState,
    ScaleByRadamState,
    ScaleByRmsState,
    ScaleByRpropState,
    ScaleBySparseAdamState,
    TraceState,
)

__all__ = ["TorchState", "declare", "declaration", "entries", "load", "plain", "transplant"]


@dataclass(frozen=True)
class TorchState:
    """How one state type maps onto torch's per-parameter state.

    ``buffers``: the fields that are torch's per-parameter tensors, under torch's names (a field
    may be None, e.g. ``max_exp_avg_sq`` without amsgrad). ``scalars``: the fields holding one
    scalar that torch keeps as a 0-d tensor in the entry of every parameter of the group (NAdam's
    ``mu_product``, ASGD's ``eta`` and ``mu``). ``step``: the field holding torch's
    per-parameter ``step`` (None if torch keeps none for this part), a 0-d float32 tensor in
    torch, or a Python int with ``int_step`` (SparseAdam). ``exists``: whether torch has created
    the buffers yet, given the state (default: once ``step`` is past 0).
    """

    buffers: tuple[str, ...]
    step: str | None = "count"
    exists: Callable[[Any], bool] | None = None
    scalars: tuple[str, ...] = ()
    int_step: bool = False

    def present(self, state: Any) -> bool:
        if self.exists is not None:
            return self.exists(state)
        return self.step is None or int(getattr(state, self.step)) > 0


_DECLARED: dict[type, TorchState] = {}


def declare(state_type: type, torch_state: TorchState) -> None:
    """Declare the torch layout of ``state_type`` (its fields must exist)."""
    fields = (*torch_state.buffers, *torch_state.scalars, torch_state.step)
    missing = [f for f in fields if f and f not in state_type._fields]
    if missing:
        raise ValueError(f"{state_type.__name__} has no field {', '.join(missing)}")
    _DECLARED[state_type] = torch_state


def declaration(state_type: type) -> TorchState | None:
    return _DECLARED.get(state_type)


declare(ScaleByAdamState, TorchState(("exp_avg", "exp_avg_sq", "max_exp_avg_sq")))
declare(ScaleByRmsState, TorchState(("square_avg", "grad_avg")))
# torch's Adagrad makes its state in the constructor: ``sum`` (and ``step`` 0) exist from the start.
declare(ScaleByAdagradState, TorchState(("sum",), exists=lambda s: True))
declare(ScaleByAdadeltaState, TorchState(("square_avg", "acc_delta")))
declare(ScaleByAdamaxState, TorchState(("exp_avg", "exp_inf")))
declare(ScaleByNadamState, TorchState(("exp_avg", "exp_avg_sq"), scalars=("mu_product",)))
declare(ScaleByRadamState, TorchState(("exp_avg", "exp_avg_sq")))
declare(ScaleBySparseAdamState, TorchState(("exp_avg", "exp_avg_sq"), int_step=True))
declare(ScaleByRpropState, TorchState(("prev", "step_size")))
declare(ScaleByAsgdState, TorchState(("ax",), scalars=("eta", "mu")))
# torch's momentum buffer exists from the first step taken with momentum; SGD keeps no step.
declare(TraceState, TorchState(("momentum_buffer",), step=None, exists=lambda s: int(s.count) > 0))
# Adafactor keeps row and column factors for matrices and a full variance for the rest: one
# buffer per leaf, None where torch keeps no such entry.
declare(ScaleByAdafactorState, TorchState(("row_var", "col_var", "variance")))
# Muon keeps no step; its buffer exists from the first step.
declare(
    EmaMomentumState,
    TorchState(("momentum_buffer",), step=None, exists=lambda s: int(s.count) > 0),
)


def plain(value: Any) -> Any:
    """A hyperparameter from a state dict as a Python value (torch may store tensors)."""
    if isinstance(value, tuple | list):
        return tuple(plain(v) for v in value)
    if isinstance(value, bool | str | None | numbers.Number):
        return value
    array = np.asarray(value)
    return array.item() if array.size == 1 else value


def _substates(state: Any) -> Iterator[Any]:
    """The NamedTuple states inside a (nested) chain state."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        yield state
        for value in state:
            yield from _substates(value)
    elif isinstance(state, tuple | list):
        for value in state:
            yield from _substates(value)


def _map_substates(state: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return fn(state)
    if isinstance(state, tuple | list):
        return type(state)(_map_substates(v, fn) for v in state)
    return state


def _declared(state: Any, layout: Layout) -> Iterator[tuple[Any, TorchState]]:
    """The declared substates; a per-parameter buffer in an undeclared state is an error."""
    for sub in _substates(state):
        torch_state = _DECLARED.get(type(sub))
        if torch_state is not None:
            yield sub, torch_state
        elif any(_is_per_leaf(v, layout) for v in sub):
            raise TypeError(
                f"{type(sub).__name__} holds per-parameter buffers but declares no torch "
                "layout: call jopt.optim.state_layout.declare for it"
            )


def entries(state: Any, layout: Layout) -> list[dict[str, Any]]:
    """torch's per-parameter state entries (an empty dict where torch has none yet)."""
    step, int_step, buffers, scalars = None, False, {}, {}
    for sub, torch_state in _declared(state, layout):
        if torch_state.step is not None:
            step, int_step = int(getattr(sub, torch_state.step)), torch_state.int_step
        if not torch_state.present(sub):
            continue
        for name in torch_state.buffers:
            value = getattr(sub, name)
            if value is not None:
                buffers[name] = _per_leaf(value, layout)
        scalars.update({name: getattr(sub, name) for name in torch_state.scalars})
    if not buffers:
        return [{} for _ in range(len(layout))]
    out = []
    for j in range(len(layout)):
        entry: dict[str, Any] = {}
        if step is not None:
            entry["step"] = step if int_step else jnp.asarray(step, jnp.float32)
        entry.update(scalars)
        entry.update({n: leaves[j] for n, leaves in buffers.items() if leaves[j] is not None})
        out.append(entry)
    return out


def _step_of(entries_: list[dict[str, Any]], layout: Layout) -> int | None:
    steps = set()
    for j, entry in enumerate(entries_):
        if "step" not in entry:
            continue
        value = np.asarray(entry["step"], np.float64)
        if value.size != 1 or not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(
                f"state of parameter {layout.names[j]}: 'step' must be a finite number >= 0, "
                f"got {entry['step']!r}"
            )
        if float(value) != int(float(value)) or float(value) >= 2**31:
            raise ValueError(
                f"state of parameter {layout.names[j]}: 'step' must be a whole number below "
                f"2**31, got {float(value)!r}"
            )
        steps.add(int(float(value)))
    if len(steps) > 1:
        raise ValueError("parameters of one group have different 'step' values")
    return steps.pop() if steps else None


def load(template: Any, entries_: list[dict[str, Any]], layout: Layout) -> Any:
    """A fresh state filled with torch-named per-parameter entries; shapes must match.

    Raises before returning anything, so a refused load changes nothing.
    """
    if not any(entries_):
        return template
    step = _step_of(entries_, layout)

    def gather(name: str, like: Any) -> Any:
        """The entries' ``name`` buffers in the template's form: flat, or one per leaf (with
        the template's shapes, e.g. Adafactor's row factors; None where it keeps none)."""
        flat = layout.is_flat(like) or _is_paired(like, layout)
        leaves = []
        for j, entry in enumerate(entries_):
            want = layout.shapes[j] if flat else (None if like[j] is None else like[j].shape)
            if want is None:
                leaves.append(None)
                continue
            value = entry.get(name)
            if value is None:
                raise ValueError(f"state of parameter {layout.names[j]} has no '{name}'")
            array = np.asarray(value)
            if array.shape != tuple(want):
                raise ValueError(
                    f"loaded state dict has '{name}' of shape {array.shape} for parameter "
                    f"{layout.names[j]}, where {tuple(want)} is expected"
                )
            leaves.append(jnp.asarray(array.astype(layout.dtype_of(j))))
        return _as_pairs(layout.flatten_leaves(leaves), like, layout) if flat else leaves

    def scalar(name: str, like: jax.Array) -> jax.Array:
        """The one value of a per-parameter scalar: torch's entries must agree on it."""
        values = set()
        for j, entry in enumerate(entries_):
            if name not in entry:
                raise ValueError(f"state of parameter {layout.names[j]} has no '{name}'")
            array = np.asarray(entry[name])
            if array.size != 1:
                raise ValueError(
                    f"state of parameter {layout.names[j]}: '{name}' must be a scalar, got "
                    f"shape {array.shape}"
                )
            values.add(array.reshape(()).astype(like.dtype).item())
        if len(values) > 1:
            raise ValueError(f"parameters of one group have different '{name}' values")
        return jnp.asarray(values.pop(), like.dtype)

    def fill(sub: Any) -> Any:
        torch_state = _DECLARED.get(type(sub))
        if torch_state is None:
            return sub
        values: dict[str, Any] = {}
        has_buffers = False
        for name in torch_state.buffers:
            if getattr(sub, name) is None:
                continue
            if any(name in e for e in entries_):
                values[name] = gather(name, getattr(sub, name))
                has_buffers = True
            elif torch_state.step is not None:
                raise ValueError(f"loaded state dict has no '{name}' for this optimizer")
        for name in torch_state.scalars:
            values[name] = scalar(name, getattr(sub, name))
        if torch_state.step is not None:
            values[torch_state.step] = jnp.asarray(step or 0, jnp.int32)
        elif "count" in sub._fields:
            values["count"] = jnp.asarray(int(has_buffers), jnp.int32)
        return sub._replace(**values)

    return _map_substates(template, fill)


def _complex_buckets(layout: Layout) -> list[str]:
    return [k for k, d in layout.dtypes.items() if jnp.issubdtype(d, jnp.complexfloating)]


def _is_paired(value: Any, layout: Layout) -> bool:
    """A flat buffer whose complex buckets are held as pairs of reals (a trailing axis of 2:
    how jopt's rules step complex parameters, as torch's ``view_as_real``)."""
    paired = _complex_buckets(layout)
    return (
        isinstance(value, dict)
        and set(value) == set(layout.sizes)
        and all(
            jnp.shape(value[k]) == ((*shape, 2) if k in paired else shape)
            for k, shape in layout.bucket_shapes.items()
        )
    )


def _as_complex(value: Any, layout: Layout) -> Any:
    """A paired flat buffer with its complex buckets complex again: torch's complex state."""
    paired = _complex_buckets(layout)
    if not paired or not _is_paired(value, layout):
        return value
    return {
        k: jax.lax.complex(v[..., 0], v[..., 1]) if k in paired else v for k, v in value.items()
    }


def _as_pairs(flat: Any, like: Any, layout: Layout) -> Any:
    """A flat buffer in the form of ``like``: complex buckets as pairs of reals if it has them."""
    paired = _complex_buckets(layout)
    if not paired or not _is_paired(like, layout):
        return flat
    return {
        k: jnp.stack([v.real, v.imag], -1).astype(like[k].dtype) if k in paired else v
        for k, v in flat.items()
    }


def _per_leaf(value: Any, layout: Layout) -> list[Any]:
    """A per-parameter buffer as one array (or None) per leaf: flat buffers are split (complex
    buckets made complex, as torch's state of a complex parameter is), a leafwise rule's list
    is already that."""
    value = _as_complex(value, layout)
    return layout.unflatten_leaves(value) if layout.is_flat(value) else list(value)


def _is_per_leaf(value: Any, layout: Layout) -> bool:
    return layout.is_flat(value) or _is_paired(value, layout) or (
        isinstance(value, list | tuple) and len(value) == len(layout) and len(layout) > 0
        and any(hasattr(v, "shape") for v in value)
    )


def transplant(old: Any, new: Any) -> Any:
    """Keep the parts of ``old`` whose state type ``new`` still has."""
    available = {type(sub): sub for sub in _substates(old)}
    return _map_substates(new, lambda sub: available.get(type(sub), sub))
