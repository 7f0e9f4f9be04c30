"""Every optimizer declares what the layers above rely on (``jopt.declare``), and the
declarations are what the behaviour shows: a term torch skips at 0 is static when left at 0, a
rule that reads parameter shapes is leafwise, and every state a facade class keeps has torch's
buffer names (``state_layout.declare``)."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import pytest

import jopt
import jopt.optim

torch = pytest.importorskip("torch")

FACTORIES = sorted(
    name for name in jopt.optimizers.__all__ if inspect.isfunction(getattr(jopt, name, None))
)
CLASSES = sorted(
    name
    for name in jopt.optim.__all__
    if inspect.isclass(getattr(jopt.optim, name))
    and issubclass(getattr(jopt.optim, name), jopt.optim.Optimizer)
    and getattr(jopt.optim, name) is not jopt.optim.Optimizer
)
MATRICES = {"a": jnp.ones((4, 3)), "b": jnp.ones((3, 5))}


def _factory(where: str, name: str):
    return getattr(jopt, name) if where == "functional" else getattr(jopt.optim, name).functional


CASES = [("functional", n) for n in FACTORIES] + [("facade", n) for n in CLASSES]


def _torch_class(name: str):
    torch_name = {"momentum": "sgd"}.get(name, name).lower()
    return next(c for n, c in vars(torch.optim).items() if n.lower() == torch_name)


def _torch_skips_at_zero(name: str, argument: str) -> bool:
    """Whether torch leaves the term out at 0: every ``weight_decay`` (``if weight_decay !=
    0``); a ``momentum`` whose buffer torch keeps only when it is not 0 (asked of torch)."""
    if argument == "weight_decay":
        return True
    keys = []
    for value in (0.0, 0.9):
        p = torch.zeros(2, 2, requires_grad=True)
        opt = _torch_class(name)([p], momentum=value)
        p.grad = torch.ones(2, 2)
        opt.step()
        keys.append(set(opt.state[p]))
    return keys[0] != keys[1]


@pytest.mark.parametrize(("where", "name"), CASES)
def test_terms_torch_skips_at_zero_are_declared(where: str, name: str) -> None:
    factory = _factory(where, name)
    takes = [a for a in ("momentum", "weight_decay") if a in inspect.signature(factory).parameters]
    expected = [a for a in takes if _torch_skips_at_zero(name, a)]
    assert sorted(jopt.spec_of(factory).static_when_zero) == expected, name


@pytest.mark.parametrize(("where", "name"), CASES)
def test_rules_that_read_shapes_are_declared_leafwise(where: str, name: str) -> None:
    """A rule that is not leafwise gives the same update on a flat buffer as on its leaves
    (what the facade relies on to keep groups flat); a leafwise one does not, or refuses."""
    factory = _factory(where, name)
    if name.lower() == "lbfgs":
        pytest.skip("L-BFGS evaluates the loss itself; its facade owns its step")
    kwargs = {"lr": 0.1}
    tx = factory(**kwargs)
    grads = jax.tree.map(lambda p: p * jnp.arange(p.size).reshape(p.shape) / p.size, MATRICES)
    flat, unflatten = jopt.flat_params(MATRICES)
    flat_grads, _ = jopt.flat_params(grads)
    try:
        updates, _ = tx.update(grads, tx.init(MATRICES), MATRICES)
        flat_updates, _ = tx.update(flat_grads, tx.init(flat), flat)
        same = all(
            bool(jnp.allclose(a, b))
            for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(unflatten(flat_updates)))
        )
    except ValueError:  # Muon: matrices only
        same = False
    assert jopt.spec_of(factory).leafwise == (not same), name


class _BufferState(NamedTuple):
    trace: Any


def _undeclared_momentum(lr: float = 0.1) -> jopt.GradientTransformation:
    def init(params):
        return _BufferState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        trace = jax.tree.map(lambda t, g: 0.9 * t + g, state.trace, updates)
        return jax.tree.map(lambda t: -lr * t, trace), _BufferState(trace)

    return jopt.GradientTransformation(init, update)


def test_a_state_without_torch_buffer_names_is_refused() -> None:
    """A facade class over a rule whose state holds per-parameter buffers but declares no
    torch names cannot write a state dict that would lose them (every shipped class's names
    are checked against torch's in test_optim_more.py)."""

    class Undeclared(jopt.optim.Optimizer):
        functional = staticmethod(_undeclared_momentum)

        def __init__(self, params, lr: float = 0.1) -> None:
            super().__init__(params, dict(lr=lr))

    opt = Undeclared(dict(MATRICES))
    opt.step(jax.tree.map(jnp.ones_like, MATRICES))
    with pytest.raises(TypeError, match="_BufferState holds per-parameter buffers"):
        opt.state_dict()


def test_a_misspelt_declaration_fails_at_definition() -> None:
    with pytest.raises(TypeError, match="declares arguments it does not take"):

        @jopt.declare(static_when_zero=("weight_decy",))
        def sgd_like(lr: float = 0.1, weight_decay: float = 0.0):
            return jopt.sgd(lr, weight_decay=weight_decay)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_assigning_a_hyperparameter_the_step_does_not_read_is_refused(name: str) -> None:
    """A static-when-zero term left at 0 is not data: assigning it raises (under jit too) and
    says how to make it data; passed explicitly as 0.0 it is data and takes effect."""
    params = dict(MATRICES)
    factory = jopt.inject_hyperparams(getattr(jopt, name))
    state = factory(lr=0.1).init(params)
    state.hyperparams["weight_decay"] = 0.1
    with pytest.raises(ValueError, match=r"weight_decay=0\.0 explicitly"):
        jax.jit(factory(lr=0.1).update)(params, state, params)
    state = factory(lr=0.1).init(params)
    state.hyperparams["maximize"] = True
    with pytest.raises(ValueError, match="maximize is static"):
        factory(lr=0.1).update(params, state, params)
    explicit = factory(lr=0.1, weight_decay=0.0)
    zero = jax.tree.map(jnp.zeros_like, params)
    state = explicit.init(params)
    plain, _ = explicit.update(zero, state, params)
    state.hyperparams["weight_decay"] = 0.1
    decayed, _ = explicit.update(zero, state, params)
    assert not jnp.allclose(plain["a"], decayed["a"])
