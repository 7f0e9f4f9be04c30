"""L-BFGS against real ``torch.optim.LBFGS``: the facade's closure step, its one-call step and
the functional jitted step, with and without the strong-Wolfe search.

Each run takes 20 outer steps on the same function in torch and jopt; after every step the
iterates must agree and each closure must have been called as many times as torch's. Gradients
come from each framework's own autodiff, so the iterates differ by rounding, which the
ill-conditioned Rosenbrock valley amplifies; the tolerances below are a few times what is
measured. The facade's programs are compiled per optimizer, so each test makes few of them.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import precision
from flax import nnx

import jopt
import jopt.optim

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch.optim")

STEPS = 20
RTOL64 = {"rosenbrock": 1e-8, "logistic": 1e-12}

# ------------------------------------------------------------------------------------------
# The problems, written once for jax.numpy and torch
# ------------------------------------------------------------------------------------------

ROSENBROCK_START = [np.array([-1.2, 1.0])]  # the classic start
# From here, fixed steps of lr=1 bounce along the valley and amplify rounding to ~1e-4 (measured
# 1.3e-4 after 20 steps; strong Wolfe: 4e-12): the slow test below.
ROSENBROCK_HARD_START = [np.array([-1.2, 1.0, -0.5, 0.8, 1.3])]

_rng = np.random.default_rng(0)
FEATURES = _rng.normal(size=(64, 5))
LABELS = np.where(FEATURES @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + _rng.normal(size=64) > 0, 1, -1)
LOGISTIC_START = [np.full(5, 0.3), np.array([-0.2])]


def rosenbrock(params: list[Any]) -> Any:
    (x,) = params
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def logistic(params: list[Any]) -> Any:
    """Mean logistic loss of a linear model, with a small L2 term (so the optimum exists)."""
    w, b = params
    if isinstance(w, torch.Tensor):
        X, y = torch.as_tensor(FEATURES, dtype=w.dtype), torch.as_tensor(LABELS, dtype=w.dtype)
        softplus = torch.nn.functional.softplus
    else:
        X, y = jnp.asarray(FEATURES, w.dtype), jnp.asarray(LABELS, w.dtype)
        softplus = jax.nn.softplus
    margin = y * (X @ w + b[0])
    return softplus(-margin).mean() + 0.01 * (w * w).sum()


PROBLEMS = {
    "rosenbrock": (rosenbrock, ROSENBROCK_START, {}),
    "logistic": (logistic, LOGISTIC_START, {"history_size": 4, "max_iter": 5}),
}


class TorchRun:
    """torch's LBFGS on a problem, counting closure calls."""

    def __init__(self, problem: str, dtype: str, start: list[np.ndarray] | None = None, **kw):
        fn, initial, defaults = PROBLEMS[problem]
        self.fn = fn
        self.params = [
            torch.tensor(np.array(x, dtype), requires_grad=True) for x in (start or initial)
        ]
        self.opt = torch.optim.LBFGS(self.params, **{**defaults, **kw})
        self.calls = 0

    def closure(self) -> Any:
        self.calls += 1
        self.opt.zero_grad()
        loss = self.fn(self.params)
        loss.backward()
        return loss

    def step(self) -> tuple[int, float]:
        before = self.calls
        loss = self.opt.step(self.closure)
        return self.calls - before, float(loss.detach())

    def values(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.params]


class JoptRun:
    """jopt's facade on the same problem, through torch's closure idiom (or ``step(loss_fn)``)."""

    def __init__(self, problem: str, dtype: str, start: list[np.ndarray] | None = None, **kw):
        fn, initial, defaults = PROBLEMS[problem]
        self.fn = fn
        self.opt = jopt.optim.LBFGS(
            [jnp.asarray(np.array(x, dtype)) for x in (start or initial)], **{**defaults, **kw}
        )
        self.calls = 0

    def closure(self) -> Any:
        self.calls += 1
        self.opt.zero_grad()
        return self.opt.backward(self.fn)

    def step(self, one_call: bool = False) -> tuple[int, float]:
        before = self.calls
        loss = self.opt.step(self.fn) if one_call else self.opt.step(self.closure)
        return self.calls - before, float(loss)

    def values(self) -> list[np.ndarray]:
        return [np.asarray(p) for p in self.opt.params]


def assert_close(actual: list[Any], desired: list[Any], rtol: float, what: str) -> None:
    """``|a - d| <= rtol * max(|d|, 1)`` leafwise: relative error, absolute near zero."""
    for a, d in zip(actual, desired):
        a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
        np.testing.assert_allclose(a, d, rtol=rtol, atol=rtol, err_msg=what)


def relative_error(actual: list[Any], desired: list[Any]) -> float:
    return max(
        float(np.max(np.abs(np.asarray(a) - d) / np.maximum(np.abs(d), 1.0)))
        for a, d in zip(actual, desired)
    )


def as_torch(tree: Any) -> Any:
    """A jopt state dict's arrays as torch tensors (what torch's load_state_dict expects)."""
    if isinstance(tree, dict):
        return {k: as_torch(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [as_torch(v) for v in tree]
    if isinstance(tree, jax.Array):
        return torch.tensor(np.array(tree))
    return tree


def assert_state_equal(ours: dict[str, Any], theirs: dict[str, Any], rtol: float) -> None:
    """Same entries, names and values as torch's state dict (torch's floats and 0-d tensors
    compare by value; lists elementwise, None where torch has None)."""
    assert ours["param_groups"] == theirs["param_groups"]
    assert list(ours["state"]) == list(theirs["state"])
    for index, entry in theirs["state"].items():
        mine = ours["state"][index]
        assert list(mine) == list(entry), (list(mine), list(entry))
        for name, value in entry.items():
            if name in ("func_evals", "n_iter"):
                assert mine[name] == value, name
                continue
            values = value if isinstance(value, list) else [value]
            got = mine[name] if isinstance(value, list) else [mine[name]]
            assert len(got) == len(values), name
            for g, v in zip(got, values):
                if v is None:
                    assert g is None, name
                    continue
                v = v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                scale = max(float(np.max(np.abs(v), initial=0.0)), 1e-300)
                np.testing.assert_allclose(np.asarray(g), v, rtol=rtol, atol=rtol * scale,
                                           err_msg=name)  # fmt: skip


# ------------------------------------------------------------------------------------------
# Trajectories, evaluation counts, the functional step, the state dict
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("problem", ["rosenbrock", "logistic"])
def test_matches_torch_step_for_step(problem: str, line_search_fn: str | None) -> None:
    with precision("float64"):
        reference = TorchRun(problem, "float64", line_search_fn=line_search_fn)
        ours = JoptRun(problem, "float64", line_search_fn=line_search_fn)
        fn, initial, defaults = PROBLEMS[problem]
        functional = jopt.lbfgs(**defaults, line_search_fn=line_search_fn)
        params = [jnp.asarray(x) for x in initial]
        state = functional.init(params)
        step = jax.jit(functional.step, static_argnums=0)
        counts = []
        for i in range(STEPS):
            torch_calls, torch_loss = reference.step()
            calls, loss = ours.step()
            evals = int(state.func_evals)
            params, state, functional_loss = step(fn, params, state)
            what = f"{problem}, step {i + 1}"
            assert calls == torch_calls, what
            assert int(state.func_evals) - evals == torch_calls, what
            counts.append(calls)
            assert_close(ours.values(), reference.values(), RTOL64[problem], what)
            rtol = RTOL64[problem]
            np.testing.assert_allclose(loss, torch_loss, rtol, rtol, err_msg=what)
            # One machine: the functional while_loop and the facade's ticks agree to rounding.
            assert_close(params, ours.values(), 1e-12, what)
            np.testing.assert_allclose(float(functional_loss), loss, 1e-12, 1e-12)
        assert sum(counts) > STEPS, "every step stopped at its first evaluation"
        assert_state_equal(ours.opt.state_dict(), reference.opt.state_dict(), 1e3 * RTOL64[problem])


@pytest.mark.slow
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_matches_torch_where_rounding_is_amplified(line_search_fn: str | None) -> None:
    with precision("float64"):
        start = ROSENBROCK_HARD_START
        reference = TorchRun("rosenbrock", "float64", start, line_search_fn=line_search_fn)
        ours = JoptRun("rosenbrock", "float64", start, line_search_fn=line_search_fn)
        for i in range(STEPS):
            assert ours.step()[0] == reference.step()[0], f"step {i + 1}"
            assert_close(ours.values(), reference.values(), 1e-3, f"step {i + 1}")


def test_float32_follows_torch() -> None:
    """In float32 the gradients near the optimum are rounding noise, so where a step stops
    (``tolerance_grad``, a loss change below ``tolerance_change``) may differ by a step; the
    losses and iterates follow torch's."""
    reference = TorchRun("logistic", "float32", line_search_fn="strong_wolfe")
    ours = JoptRun("logistic", "float32", line_search_fn="strong_wolfe")
    for i in range(5):
        _, torch_loss = reference.step()
        _, loss = ours.step()
        np.testing.assert_allclose(loss, torch_loss, rtol=1e-5, err_msg=f"step {i + 1}")
        assert_close(ours.values(), reference.values(), 1e-3, f"step {i + 1}")
    for p in ours.opt.params:
        assert p.dtype == jnp.float32
    assert ours.opt.state_dict()["state"][0]["d"].dtype == jnp.float32


# ------------------------------------------------------------------------------------------
# Stopping rules
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line_search_fn", ["strong_wolfe"])
def test_a_start_at_the_optimum_stops_at_the_first_evaluation(line_search_fn) -> None:
    with precision("float64"):
        start = [np.ones(5)]
        reference = TorchRun("rosenbrock", "float64", start, line_search_fn=line_search_fn)
        ours = JoptRun("rosenbrock", "float64", start, line_search_fn=line_search_fn)
        for _ in range(2):
            assert ours.step() == reference.step() == (1, 0.0)
        assert ours.values()[0].tolist() == [1.0] * 5
        assert_state_equal(ours.opt.state_dict(), reference.opt.state_dict(), 0)
        assert ours.opt.state_dict()["state"][0] == {"func_evals": 2, "n_iter": 0}


def test_tolerances_and_budgets_stop_early_as_in_torch() -> None:
    """A loose ``tolerance_change``, then ``max_eval`` below ``max_iter``, then
    ``tolerance_grad``: each stops torch's step where it stops jopt's (one optimizer whose group
    is changed between steps, as torch allows)."""
    with precision("float64"):
        reference = TorchRun("rosenbrock", "float64", tolerance_change=1e-2, lr=0.5)
        ours = JoptRun("rosenbrock", "float64", tolerance_change=1e-2, lr=0.5)
        settings = [{}, {"tolerance_change": 1e-9, "max_eval": 3}, {"tolerance_grad": 10.0}]
        for change in settings:
            for run in (reference, ours):
                run.opt.param_groups[0].update(change)
            for i in range(2):
                torch_calls, _ = reference.step()
                calls, _ = ours.step()
                assert calls == torch_calls, (change, i)
                assert_close(ours.values(), reference.values(), 1e-9, f"{change}, {i}")
        assert_state_equal(ours.opt.state_dict(), reference.opt.state_dict(), 1e-6)


# ------------------------------------------------------------------------------------------
# state_dict round trips
# ------------------------------------------------------------------------------------------


def test_state_dict_round_trips_torch_to_jopt_to_torch() -> None:
    with precision("float64"):
        kw = {"line_search_fn": "strong_wolfe", "max_iter": 4}
        reference = TorchRun("logistic", "float64", **kw)
        for _ in range(2):
            reference.step()
        ours = JoptRun("logistic", "float64", reference.values(), **kw)
        ours.opt.load_state_dict(reference.opt.state_dict())
        for i in range(2):  # torch -> jopt: jopt continues torch's run
            assert ours.step()[0] == reference.step()[0]
            assert_close(ours.values(), reference.values(), 1e-12, f"torch -> jopt, {i}")
        saved = ours.opt.state_dict()
        assert_state_equal(saved, reference.opt.state_dict(), 1e-10)
        again = TorchRun("logistic", "float64", ours.values(), **kw)
        again.opt.load_state_dict(as_torch(saved))
        for i in range(2):  # jopt -> torch: torch continues jopt's run
            assert again.step()[0] == reference.step()[0]
            assert_close(again.values(), reference.values(), 1e-12, f"jopt -> torch, {i}")


def test_state_dict_round_trips_jopt_to_jopt() -> None:
    """Save after a step, take two, go back (the parameters are Variables the test resets) and
    load: the same two steps again, bit for bit, with no new compilation."""
    fn, initial, _ = PROBLEMS["logistic"]
    variables = [nnx.Param(jnp.asarray(x, jnp.float32)) for x in initial]
    opt = jopt.optim.LBFGS(variables, line_search_fn="strong_wolfe", max_iter=4, history_size=2)
    opt.step(fn)  # step(loss_fn): the whole step in one jitted while_loop
    saved, start = opt.state_dict(), [v[...] for v in variables]
    first = [(float(opt.step(fn)), [np.asarray(v[...]) for v in variables]) for _ in range(2)]
    compiles = opt.compile_count
    for v, x in zip(variables, start):
        v[...] = x
    opt.load_state_dict(saved)
    assert_state_equal(opt.state_dict(), as_torch(saved), 0)
    again = [(float(opt.step(fn)), [np.asarray(v[...]) for v in variables]) for _ in range(2)]
    for (loss, values), (loss_again, values_again) in zip(first, again):
        assert loss_again == loss
        assert_close(values_again, values, 0, "after a load")
    assert opt.compile_count == compiles, "the step was compiled again"


# ------------------------------------------------------------------------------------------
# torch's errors
# ------------------------------------------------------------------------------------------


def _torch_error(build) -> tuple[type[Exception], str]:
    with pytest.raises(Exception) as caught:
        build()
    return caught.type, str(caught.value)


@pytest.mark.parametrize(
    "kwargs, torch_kwargs",
    [({"lr": -1.0}, {"lr": -1.0}), ({"lr": jnp.ones(2)}, {"lr": torch.ones(2)})],
    ids=["negative-lr", "lr-of-two-elements"],
)
def test_constructor_errors_are_torchs(kwargs: dict, torch_kwargs: dict) -> None:
    kind, message = _torch_error(lambda: torch.optim.LBFGS([torch.zeros(2)], **torch_kwargs))
    with pytest.raises(kind, match=re.escape(message)):
        jopt.optim.LBFGS([jnp.zeros(2)], **kwargs)
    with pytest.raises(kind, match=re.escape(message)):
        jopt.lbfgs(**kwargs)


def test_param_groups_are_refused_as_torch_refuses_them() -> None:
    kind, message = _torch_error(
        lambda: torch.optim.LBFGS([{"params": [torch.zeros(2)]}, {"params": [torch.zeros(1)]}])
    )
    with pytest.raises(kind, match=re.escape(message)):
        jopt.optim.LBFGS([{"params": [jnp.zeros(2)]}, {"params": [jnp.zeros(1)]}])
    assert jopt.optim.LBFGS([jnp.zeros(2)]).param_groups[0]["max_eval"] == 25


def test_an_unknown_line_search_is_torchs_error_at_the_step() -> None:
    x = torch.ones(2, requires_grad=True)
    opt = torch.optim.LBFGS([x], line_search_fn="backtracking")

    def closure():
        opt.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    kind, message = _torch_error(lambda: opt.step(closure))
    ours = jopt.optim.LBFGS([jnp.ones(2)], line_search_fn="backtracking")
    with pytest.raises(kind, match=re.escape(message)):
        ours.step(lambda p: (p[0] * p[0]).sum())


# ------------------------------------------------------------------------------------------
# An nnx module shared with the optimizer
# ------------------------------------------------------------------------------------------


def test_nnx_module_through_the_facade_matches_torch() -> None:
    """A tiny ``nnx.Linear`` regression: the closure sees the trial points in the module's
    Variables, and ``step(loss_fn)`` writes the result back into them."""
    with precision("float64"):
        X = FEATURES[:, :3]
        y = X @ np.array([[0.5], [-1.0], [2.0]]) + 0.3 + 0.1 * np.sin(np.arange(64))[:, None]
        models = [nnx.Linear(3, 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64) for _ in range(2)]
        for model in models[1:]:
            nnx.update(model, nnx.state(models[0]))
        kernel = np.asarray(models[0].kernel[...])
        bias = np.asarray(models[0].bias[...])
        linear = torch.nn.Linear(3, 1).double()
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(kernel.T))
            linear.bias.copy_(torch.tensor(bias))
        tX, ty = torch.tensor(X), torch.tensor(y)
        topt = torch.optim.LBFGS(linear.parameters(), line_search_fn="strong_wolfe")

        def torch_closure():
            topt.zero_grad()
            loss = ((linear(tX) - ty) ** 2).mean()
            loss.backward()
            return loss

        def loss_fn(model: nnx.Linear, x: jax.Array, target: jax.Array) -> jax.Array:
            return ((model(x) - target) ** 2).mean()

        closure_opt = jopt.optim.LBFGS(models[0], line_search_fn="strong_wolfe")
        one_call_opt = jopt.optim.LBFGS(models[1], line_search_fn="strong_wolfe")
        seen = []

        def closure():
            seen.append(np.asarray(models[0].bias[...]).copy())
            closure_opt.zero_grad()
            return closure_opt.backward(loss_fn, jnp.asarray(X), jnp.asarray(y))

        for i in range(3):
            before = len(seen)
            torch_loss = float(topt.step(torch_closure).detach())
            loss = closure_opt.step(closure)
            one_call_opt.step(loss_fn, jnp.asarray(X), jnp.asarray(y))
            np.testing.assert_allclose(float(loss), torch_loss, rtol=1e-12)
            want = [linear.weight.detach().numpy().T, linear.bias.detach().numpy()]
            for model in models:
                assert_close([model.kernel[...], model.bias[...]], want, 1e-9, f"step {i + 1}")
            torch_evals = topt.state_dict()["state"][0]["func_evals"]
            assert closure_opt.state_dict()["state"][0]["func_evals"] == torch_evals
            # The closure was called at the trial points, not at the step's start each time.
            assert len({float(b[0]) for b in seen[before:]}) > 1 or len(seen) - before == 1
