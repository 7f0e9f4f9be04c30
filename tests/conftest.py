"""Shared test helpers: a fixed parameter tree, a smooth nonconvex loss, torch's optimizers.

The loss is written once for any array module with ``cos``, so jax and torch compute the same
function; gradients come from each framework's own autodiff.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jopt

# A dict of differently shaped leaves: a matrix, a vector, a one-element array and a 3-d array.
SHAPES = {"w": (4, 3), "b": (3,), "s": (1,), "t": (2, 3, 2)}

# Relative tolerance against torch per dtype; see ``assert_tree_close`` for the scale it uses.
RTOL = {"float32": 1e-5, "float64": 1e-10}


def make_params(dtype: Any = "float32", seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic parameters in [-1.5, -0.5] U [0.5, 1.5], one leaf per entry of SHAPES."""
    rng = np.random.default_rng(seed)
    return {
        k: (rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)
        for k, shape in SHAPES.items()
    }


def loss(params: dict[str, Any], xp: Any) -> Any:
    """A smooth nonconvex function of all leaves, for ``xp`` = ``jax.numpy`` or ``torch``.

    Each leaf sits in a cosine landscape with a weak quadratic pull; the last term couples the
    leaves, so a mix-up between them changes every gradient.
    """
    total = 0.0
    coupling = 0.0
    for i, key in enumerate(sorted(params)):
        x = params[key]
        total = total + (-xp.cos(3 * x + i) / 3 + 0.05 * x * x).sum()
        coupling = coupling + x.sum()
    return total + 0.005 * coupling * coupling


@jax.jit
def jax_grads(params: Any) -> Any:
    """The gradient of :func:`loss` at jax parameters (jitted: eager autodiff of many small
    operations costs seconds)."""
    return jax.grad(loss)(params, jnp)


def numpy_grads(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The gradient of :func:`loss`, in closed form, in each leaf's dtype (test_core checks it
    against jax's autodiff). Cheaper than autodiff, so oracle runs spend their time in the
    optimizers."""
    coupling = sum(np.sum(x) for x in params.values())
    index = {key: i for i, key in enumerate(sorted(params))}
    with np.errstate(invalid="ignore"):  # non-finite parameters give NaN, as autodiff does
        return {
            key: (np.sin(3 * x + index[key]) + 0.1 * x + 0.01 * coupling).astype(x.dtype)
            for key, x in params.items()
        }


def torch_grads(tparams: dict[str, Any]) -> dict[str, np.ndarray]:
    """The gradient of :func:`loss` at torch's parameters: set as their ``.grad`` and returned
    as NumPy arrays, to feed the same numbers to jopt."""
    import torch

    grads = numpy_grads(from_torch(tparams))
    for key, t in tparams.items():
        t.grad = torch.from_numpy(grads[key].copy())
    return grads


def to_torch(params: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.tensor(np.array(v), requires_grad=True) for k, v in params.items()}


def from_torch(tparams: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in tparams.items()}


# The jopt factory name -> (torch class name, torch arguments jopt's defaults stand for).
TORCH_CLASS = {
    "sgd": ("SGD", {}),
    "momentum": ("SGD", {"momentum": 0.9}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "rmsprop": ("RMSprop", {}),
    "adagrad": ("Adagrad", {}),
}


def torch_optimizer(name: str, params: Any, **kwargs: Any) -> Any:
    """``torch.optim`` counterpart of ``jopt.<name>(**kwargs)`` over ``params``."""
    import torch

    cls, implied = TORCH_CLASS[name]
    return getattr(torch.optim, cls)(params, **{**implied, **kwargs})


def assert_tree_close(
    actual: Any, desired: Any, rtol: float, what: str = "", scale: Any = None
) -> None:
    """Leafwise ``|actual - desired| <= rtol * max(|desired|, leaf scale)``.

    The leaf scale is the largest magnitude in the ``desired`` leaf and, if given, in the leaf
    of ``scale`` (e.g. the initial parameters): rounding errors made while a parameter was large
    stay when it shrinks, so an entry near zero is held to the precision of its trajectory, not to
    a bound no float arithmetic could meet.
    """
    got, got_def = jax.tree_util.tree_flatten_with_path(actual)
    want, want_def = jax.tree_util.tree_flatten_with_path(desired)
    assert got_def == want_def, f"{what}: tree {got_def} != {want_def}"
    scales = jax.tree.leaves(scale) if scale is not None else [0.0] * len(want)
    for (path, a), (_, d), s in zip(got, want, scales):
        a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
        assert a.shape == d.shape, f"{what} {jax.tree_util.keystr(path)}: {a.shape} != {d.shape}"
        size = max(_largest(d), _largest(np.asarray(s, np.float64)))
        if np.allclose(a, d, rtol=rtol, atol=rtol * size, equal_nan=True):
            continue
        np.testing.assert_allclose(
            a, d, rtol=rtol, atol=rtol * size, err_msg=f"{what} {jax.tree_util.keystr(path)}"
        )


def _largest(x: np.ndarray) -> float:
    """The largest finite magnitude in ``x`` (0 if none)."""
    finite = np.abs(x[np.isfinite(x)])
    return float(np.max(finite, initial=0.0))


@dataclasses.dataclass
class OracleRun:
    """What :func:`run_against_torch` leaves: jopt's final parameters (in jopt's layout) and
    state, its last updates (with ``with_updates``), how often its jitted step was traced,
    and torch's optimizer and parameters after the same steps."""

    params: Any
    state: Any
    updates: Any
    traces: int
    reference: Any
    tparams: dict[str, Any]


def counted_step(
    tx: Any,
    apply_updates: Callable[[Any, Any], Any] = jopt.apply_updates,
    with_updates: bool = False,
):
    """A jitted ``(params, state, grads) -> (params, state)`` (``with_updates``: and the
    updates, which XLA then materializes too: a larger program, slower to compile) and the
    list of its traces (one entry per trace)."""
    traces: list[int] = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        params = apply_updates(params, updates)
        return (params, state, updates) if with_updates else (params, state)

    return step, traces


def _same(tree: Any) -> Any:
    return tree


def run_against_torch(
    tx: Any,
    reference: Any,
    tparams: dict[str, Any],
    steps: int,
    *,
    rtol: float | None = RTOL["float32"],
    grads: Callable[[int, dict[str, Any]], Any] | None = None,
    change: Callable[[int, Any, dict[str, Any]], None] | None = None,
    skip_torch: Collection[int] = (),
    check: Callable[[int, Any, Any], None] | None = None,
    params: Any = None,
    state: Any = None,
    step: Callable[[Any, Any, Any], tuple[Any, Any]] | None = None,
    to_jopt: Callable[[Any], Any] = _same,
    view: Callable[[Any], Any] = _same,
    jit: bool = True,
    apply_updates: Callable[[Any, Any], Any] = jopt.apply_updates,
    with_updates: bool = False,
) -> OracleRun:
    """The oracle loop: ``steps`` steps of ``tx`` and of torch's ``reference`` (an optimizer
    over the tensors of ``tparams``) side by side, on the same gradients.

    Before step ``i``: ``change(i, state, reference.param_groups[0])`` may edit jopt's state and
    torch's group (a hyperparameter changed mid-run). ``grads(i, tparams)`` sets torch's
    ``.grad`` and returns jopt's gradients (default :func:`torch_grads`: the shared loss's
    gradient at torch's current parameters). torch steps unless ``i`` is in ``skip_torch``;
    jopt steps always, jitted (traces counted) unless ``jit=False``, or through ``step(params,
    state, grads) -> (params, state)`` where the test brings its own (then ``params`` and
    ``state`` are what it carries). After every step ``view(params)`` must equal torch's
    parameters within ``rtol`` (:func:`assert_tree_close`, scaled by the start); ``rtol=None``
    leaves the comparison to the caller. ``check(i, params, state)`` runs after each step.

    jopt starts from ``params`` (default: torch's parameters as jax arrays, through ``to_jopt``,
    which also maps torch's gradients into jopt's layout, e.g. one flat buffer; ``view`` maps
    back) and from ``state`` (default ``tx.init(params)``). ``with_updates`` keeps the last
    step's updates in the result (``None`` otherwise).
    """
    start = None
    if params is None:
        start = from_torch(tparams)
        params = jax.tree.map(jnp.asarray, to_jopt(start))
    elif rtol is not None:
        start = view(params)
    traces: list[int] = []
    if step is None:
        if jit:
            step, traces = counted_step(tx, apply_updates, with_updates)
        else:

            def step(params, state, grads):
                updates, state = tx.update(grads, state, params)
                params = apply_updates(params, updates)
                return (params, state, updates) if with_updates else (params, state)

        if state is None:
            state = tx.init(params)

    grads = grads or (lambda i, tparams: torch_grads(tparams))
    updates = None
    for i in range(steps):
        if change is not None:
            change(i, state, reference.param_groups[0])
        g = grads(i, tparams)
        if i not in skip_torch:
            reference.step()
        params, state, *last = step(params, state, to_jopt(g))
        updates = last[0] if last else None
        if rtol is not None:
            what = f"step {i + 1}"
            assert_tree_close(view(params), from_torch(tparams), rtol, what, scale=start)
        if check is not None:
            check(i, params, state)
    return OracleRun(params, state, updates, len(traces), reference, tparams)


@contextlib.contextmanager
def precision(dtype: str):
    """Run jax in 64-bit mode for float64 (locally: the rest of the suite stays in 32 bits)."""
    with jax.enable_x64(dtype == "float64"):
        yield


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest):
    """Each test with this fixture runs in float32 and float64 (jax's x64 mode, locally)."""
    with precision(request.param):
        yield request.param
