"""The building blocks: clipping, masks, L1, skip_nonfinite against torch, and properties
(tree, shapes and dtypes kept; jit equals eager) of every transform and optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    RTOL,
    assert_tree_close,
    jax_grads,
    make_params,
    run_against_torch,
    to_torch,
    torch_grads,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jopt

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch")


# --------------------------------------------------------------------------------------------
# clip_by_global_norm against torch.nn.utils.clip_grad_norm_
# --------------------------------------------------------------------------------------------


def _grads_with_torch(scale: float, dtype: str):
    """The shared gradients times ``scale``: as NumPy, and set as ``.grad`` of torch tensors."""
    tparams = to_torch(make_params(dtype))
    grads = {k: g * np.asarray(scale, dtype) for k, g in torch_grads(tparams).items()}
    for key, t in tparams.items():
        t.grad = torch.from_numpy(grads[key].copy())
    return grads, tparams


@jax.jit
def _clip(grads, max_norm):
    return jopt.clip_by_global_norm(max_norm).update(grads, jopt.EmptyState())[0]


@pytest.mark.parametrize("scale", [0.0, 1e-3, 1.0, 50.0])
@pytest.mark.parametrize("max_norm", [0.01, 1.0, 5.0, 1e4])
def test_clip_by_global_norm_matches_torch(max_norm: float, scale: float, dtype: str) -> None:
    grads, tparams = _grads_with_torch(scale, dtype)
    clipped = _clip(grads, max_norm)
    torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm)
    theirs = {k: t.grad.numpy() for k, t in tparams.items()}
    assert_tree_close(clipped, theirs, RTOL[dtype], scale=grads)
    for k, v in clipped.items():
        assert v.dtype == grads[k].dtype, k


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_by_global_norm_nonfinite_as_torch(bad: float) -> None:
    grads, tparams = _grads_with_torch(1.0, "float32")
    grads["t"][0, 1, 1] = bad
    tparams["t"].grad[0, 1, 1] = bad
    clipped, _ = jopt.clip_by_global_norm(1.0).update(grads, jopt.EmptyState())
    torch.nn.utils.clip_grad_norm_(list(tparams.values()), 1.0)
    for k, t in tparams.items():
        np.testing.assert_array_equal(np.asarray(clipped[k]), t.grad.numpy(), err_msg=k)


# --------------------------------------------------------------------------------------------
# Masks and L1, against torch's param groups and autograd
# --------------------------------------------------------------------------------------------

DECAYED = {"w": True, "b": False, "s": False, "t": True}  # no decay on the vector-like leaves
MASKS = {
    "tree": DECAYED,
    "callable": lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
}


def _groups(tparams, **decayed_group):
    return [
        {"params": [tparams[k] for k in tparams if DECAYED[k]], **decayed_group},
        {"params": [tparams[k] for k in tparams if not DECAYED[k]], "weight_decay": 0.0},
    ]


def _extra_grad(extra):
    """Gradients for :func:`run_against_torch` where torch adds ``extra(p)`` to its own
    (a penalty jopt adds itself): jopt gets the shared loss's gradient alone."""

    def grads(i, tparams):
        grads = torch_grads(tparams)
        for t in tparams.values():
            t.grad = t.grad + extra(t.detach())
        return grads

    return grads


@pytest.mark.parametrize("mask", sorted(MASKS))
def test_masked_coupled_decay_is_torch_param_groups(mask: str) -> None:
    """``chain(add_decayed_weights(wd, mask), sgd)`` is SGD with decay in one param group."""
    tparams = to_torch(make_params())
    reference = torch.optim.SGD(
        _groups(tparams, weight_decay=0.1), lr=0.05, momentum=0.9, dampening=0.1
    )
    tx = jopt.chain(
        jopt.add_decayed_weights(0.1, mask=MASKS[mask]),
        jopt.sgd(lr=0.05, momentum=0.9, dampening=0.1),
    )
    run_against_torch(tx, reference, tparams, 20)


@pytest.mark.parametrize("mask", sorted(MASKS))
def test_masked_decoupled_decay_is_torch_adamw_param_groups(mask: str) -> None:
    """AdamW's decay from the building blocks: decay after the preconditioner, before ``-lr``."""
    tparams = to_torch(make_params())
    reference = torch.optim.AdamW(_groups(tparams, weight_decay=0.1), lr=0.01, amsgrad=True)
    tx = jopt.chain(
        jopt.scale_by_adam(amsgrad=True),
        jopt.add_decayed_weights(0.1, mask=MASKS[mask]),
        jopt.scale_by_learning_rate(0.01),
    )
    run_against_torch(tx, reference, tparams, 20)


def test_mask_that_does_not_match_names_the_path() -> None:
    params = jax.tree.map(jnp.asarray, make_params())
    tx = jopt.add_decayed_weights(0.1, mask={k: v for k, v in DECAYED.items() if k != "t"})
    with pytest.raises(
        ValueError, match=r"mask entries do not match the parameters: missing \['t'\]"
    ):
        tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("l1", [1e-3, 0.1])
def test_l1_penalty_is_the_gradient_of_torchs_l1_loss(l1: float) -> None:
    """``chain(add_l1_penalty(l1), sgd)`` is SGD on ``loss + l1 * sum|p|`` by torch's autograd,
    zeros included (the subgradient at 0 is 0 in both)."""
    params = make_params()
    params["w"][1] = 0.0
    params["s"][0] = 0.0
    tparams = to_torch(params)
    reference = torch.optim.SGD(list(tparams.values()), lr=0.05, momentum=0.5)

    def l1_grad(p):
        p = p.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(l1 * p.abs().sum(), [p])
        return grad

    tx = jopt.chain(jopt.add_l1_penalty(l1), jopt.sgd(lr=0.05, momentum=0.5))
    run_against_torch(tx, reference, tparams, 10, grads=_extra_grad(l1_grad))


def test_add_decayed_weights_needs_params() -> None:
    params = jax.tree.map(jnp.asarray, make_params())
    tx = jopt.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, tx.init(params))


# --------------------------------------------------------------------------------------------
# skip_nonfinite
# --------------------------------------------------------------------------------------------


# Built once, so that the cases share their compiled updates.
SKIP_INNER = jopt.inject_hyperparams(jopt.adam)(lr=0.1, amsgrad=True)
SKIP_TX = jopt.skip_nonfinite(SKIP_INNER)
SKIP_UPDATE, INNER_UPDATE = jax.jit(SKIP_TX.update), jax.jit(SKIP_INNER.update)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_skip_nonfinite_keeps_the_inner_state(bad: float) -> None:
    tx, update = SKIP_TX, SKIP_UPDATE
    params = jax.tree.map(jnp.asarray, make_params())
    grads = jax_grads(params)
    _, state = update(grads, tx.init(params), params)
    poisoned = {**grads, "b": grads["b"].at[1].set(bad)}
    updates, after = update(poisoned, state, params)
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, np.zeros_like(u))
    jax.tree.map(np.testing.assert_array_equal, after.inner_state, state.inner_state)
    assert (int(after.skipped), bool(after.last_finite)) == (1, False)
    # The next finite step is the step the inner optimizer would have taken.
    expected, _ = INNER_UPDATE(grads, state.inner_state, params)
    got, final = update(grads, after, params)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
    assert (int(final.skipped), bool(final.last_finite)) == (1, True)


# --------------------------------------------------------------------------------------------
# Properties of every transform and optimizer
# --------------------------------------------------------------------------------------------

# The building blocks, and a few compositions (the optimizers' own jit == eager is in
# test_core).
TRANSFORMS = {
    "scale": lambda: jopt.scale(-0.5),
    "add_decayed_weights": lambda: jopt.add_decayed_weights(0.1),
    "add_l1_penalty": lambda: jopt.add_l1_penalty(0.01),
    "clip_by_global_norm": lambda: jopt.clip_by_global_norm(1.0),
    "scale_by_learning_rate": lambda: jopt.scale_by_learning_rate(0.1),
    "scale_by_learning_rate-schedule": lambda: jopt.scale_by_learning_rate(
        lambda count: 0.1 / (1 + count)
    ),
    "trace": lambda: jopt.trace(0.9, dampening=0.1),
    "trace-nesterov": lambda: jopt.trace(0.9, nesterov=True),
    "scale_by_adam": lambda: jopt.scale_by_adam(amsgrad=True),
    "scale_by_rms": lambda: jopt.scale_by_rms(centered=True),
    "scale_by_adagrad": lambda: jopt.scale_by_adagrad(lr_decay=0.1, initial_accumulator_value=0.1),
    "skip_nonfinite": lambda: jopt.skip_nonfinite(jopt.sgd(lr=0.1, momentum=0.9)),
    "injected-adamw": lambda: jopt.inject_hyperparams(jopt.adamw)(lr=0.1, maximize=True),
}
BUILT = {name: make() for name, make in TRANSFORMS.items()}
NAMES = sorted(BUILT)


@jax.jit
def _all_updates(grads, states, params):
    """Every transform's update, jitted as one program: one compilation per dtype for all of
    them (13 programs would cost several times as long to compile)."""
    return {name: BUILT[name].update(grads, states[name], params) for name in NAMES}


# One tree layout (zeros stand for leaves): nested containers, a None, a scalar. The dtype is
# a parameter, so each test compiles once and its examples explore values only.
LAYOUT = {"layers": [{"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}, (np.zeros(()), None)]}
DTYPES = ["float32", "bfloat16", "float16"]
# jit may fuse a chain of low-precision operations and round once where eager rounds each.
JIT_RTOL = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 4e-3}


@st.composite
def trees(draw, dtype: str):
    """Parameters and gradients of the layout in ``dtype``, values in [-4, 4]."""
    finite = st.floats(-4, 4, width=32, allow_subnormal=False)

    def leaf(like):
        return jnp.asarray(draw(hnp.arrays(np.float32, like.shape, elements=finite)), dtype)

    return jax.tree.map(leaf, LAYOUT), jax.tree.map(leaf, LAYOUT)


def _signature(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10, deadline=None, derandomize=True)
@given(data=st.data())
def test_tree_shapes_and_dtypes_kept_and_jit_equals_eager(dtype, data) -> None:
    """Each example runs every transform (so 30 examples per transform, 10 per dtype)."""
    params, grads = data.draw(trees(dtype))
    rtol = JIT_RTOL[dtype]
    states = {name: BUILT[name].init(params) for name in NAMES}
    eager_states = jit_states = states
    for step in range(2):
        jitted = _all_updates(grads, jit_states, params)
        jit_states = {name: jitted[name][1] for name in NAMES}
        for name in NAMES:
            eager_updates, eager_state = BUILT[name].update(grads, eager_states[name], params)
            eager_states = {**eager_states, name: eager_state}
            jit_updates, jit_state = jitted[name]
            what = f"{name}, step {step + 1}"
            # Updates have the gradients' tree, shapes and dtypes; the state keeps its types.
            assert _signature(eager_updates) == _signature(grads), what
            assert _signature(eager_state) == _signature(states[name]), what
            assert _signature(jit_state) == _signature(states[name]), what
            assert_tree_close(jit_updates, eager_updates, rtol, f"updates, {what}")
            assert_tree_close(jit_state, eager_state, rtol, f"state, {what}")
    # Every float buffer of a state that mirrors a parameter has its dtype.
    shapes = {(x.shape, x.dtype) for x in jax.tree.leaves(params)}
    for name in NAMES:
        for x in jax.tree.leaves(states[name]):
            if x.shape and jnp.issubdtype(x.dtype, jnp.floating):
                assert (x.shape, x.dtype) in shapes, name
