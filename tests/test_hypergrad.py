"""Hypergradients: ``jax.grad`` of the loss after T steps of a jopt optimizer with respect to
its float hyperparameters, held to torch.

Two oracles, both in float64:

- **Finite differences of plain ``torch.optim`` runs.** For each hyperparameter, a 4-point
  central difference ``(8 (f(v+h) - f(v-h)) - (f(v+2h) - f(v-2h))) / 12h`` of torch's loss
  after ``STEPS`` steps; its truncation error is O(h^4). ``h`` is 1e-3 of the hyperparameter's
  own scale: its value, or its distance to 1 for an average's weight (``betas``, ``alpha``,
  ``rho``, ``momentum``), so that ``v - 2h`` and ``v + 2h`` stay where torch accepts them. An
  ``eps`` is differentiated at 1e-4 or 1e-3 rather than at 1e-8, where a step of 1e-3 of it
  would change the loss by less than its rounding. Roundoff is then below 1e-9 relative and
  truncation below that; the test asks for 1e-6. Rprop's ``etas`` move by 1e-5 only: its loss
  is smooth only between the changes of sign of ``g * prev``, and a step of 1e-3 crosses one.
- **torch's own autograd**, ``differentiable=True``: torch steps non-leaf parameters in an
  autograd graph, and ``torch.autograd.grad`` gives the hypergradient directly (1e-9).

jopt's side is :func:`jopt.hypergrad` (``jax.value_and_grad`` over :func:`jopt.unroll`), one
compiled program per configuration for all its hyperparameters at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loss, numpy_grads

import jopt

torch = pytest.importorskip("torch", reason="the hypergradients are checked against torch")

STEPS = 20
SLOW = pytest.mark.slow  # a second configuration of an optimizer the fast pass covers
FD_RTOL = 1e-6
AUTOGRAD_RTOL = 1e-9


@pytest.fixture(autouse=True)
def x64():
    """float64 in jax (locally) and as torch's default dtype (its scalar state, ``step``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with jax.enable_x64(True):
            yield
    finally:
        torch.set_default_dtype(old)


def start() -> dict[str, np.ndarray]:
    """One 3x4 matrix (Muon and Adafactor's factored path take matrices)."""
    rng = np.random.default_rng(0)
    return {"w": rng.uniform(0.5, 1.5, (3, 4)) * rng.choice([-1.0, 1.0], (3, 4))}


def jax_loss(params: Any) -> jax.Array:
    return loss(params, jnp)


# --------------------------------------------------------------------------------------------
# torch runs
# --------------------------------------------------------------------------------------------

TORCH_CLASS = {
    "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adamax": "Adamax", "nadam": "NAdam",
    "radam": "RAdam", "rmsprop": "RMSprop", "adagrad": "Adagrad", "adadelta": "Adadelta",
    "asgd": "ASGD", "rprop": "Rprop", "adafactor": "Adafactor", "muon": "Muon",
    "sparse_adam": "SparseAdam", "lbfgs": "LBFGS",
}


def torch_final_loss(
    name: str,
    kwargs: dict[str, Any],
    steps: int = STEPS,
    *,
    start: dict[str, np.ndarray] | None = None,
    scheduler: Callable[[Any], Any] | None = None,
) -> float:
    """torch's loss after ``steps`` steps of ``torch.optim.<name>(**kwargs)`` from
    :func:`start` (or ``start``), each step on the closed-form gradient (an L-BFGS step on a
    closure), then ``scheduler(opt).step()`` where one is given."""
    first = globals()["start"]() if start is None else start
    tparams = {k: torch.tensor(v, requires_grad=name == "lbfgs") for k, v in first.items()}
    opt = getattr(torch.optim, TORCH_CLASS[name])(list(tparams.values()), **kwargs)
    schedule = scheduler(opt) if scheduler is not None else None
    sparse = name == "sparse_adam"

    def closure() -> Any:
        opt.zero_grad()
        value = loss(tparams, torch)
        value.backward()
        return value

    for _ in range(steps):
        if name == "lbfgs":
            opt.step(closure)
            continue
        grads = numpy_grads({k: t.detach().numpy() for k, t in tparams.items()})
        for key, t in tparams.items():
            grad = torch.from_numpy(grads[key].copy())
            t.grad = grad.to_sparse() if sparse else grad
        opt.step()
        if schedule is not None:
            schedule.step()
    with torch.no_grad():
        return float(loss(tparams, torch))


Key = tuple[str, int | None]  # a hyperparameter, and the index into a tuple (betas, etas)

AVERAGES = {"betas", "alpha", "rho", "momentum", "dampening"}


def fd_step(key: Key, value: float) -> float:
    name, _ = key
    if name in AVERAGES:
        return 1e-3 * min(value, 1.0 - value)
    if name == "etas":  # a step of 1e-3 flips the sign of some g * prev within 20 steps
        return 1e-5 * abs(value)
    return 1e-3 * abs(value)


def _with(hyper: dict[str, Any], key: Key, value: float) -> dict[str, Any]:
    name, index = key
    out = dict(hyper)
    if index is None:
        out[name] = value
    else:
        out[name] = tuple(value if i == index else v for i, v in enumerate(hyper[name]))
    return out


def _keys(hyper: dict[str, Any]) -> list[Key]:
    return [
        (name, i)
        for name, v in hyper.items()
        for i in (range(len(v)) if isinstance(v, tuple) else [None])
    ]


def _value(tree: dict[str, Any], key: Key) -> float:
    name, index = key
    return float(tree[name] if index is None else tree[name][index])


def torch_fd(name: str, hyper: dict[str, Any], fixed: dict[str, Any], key: Key) -> float:
    """The 4-point central difference of torch's final loss in one hyperparameter."""
    v = _value(hyper, key)
    h = fd_step(key, v)

    def f(x: float) -> float:
        return torch_final_loss(name, {**fixed, **_with(hyper, key, x)})

    return (8 * (f(v + h) - f(v - h)) - (f(v + 2 * h) - f(v - 2 * h))) / (12 * h)


def jopt_hypergrad(
    factory: Callable[..., Any], hyper: dict[str, Any], fixed: dict[str, Any], **kw: Any
) -> tuple[float, dict[str, Any]]:
    params = {k: jnp.asarray(v) for k, v in start().items()}
    run = jax.jit(
        lambda h: jopt.hypergrad(factory, h, jax_loss, params, STEPS, remat=None, **fixed, **kw)
    )
    value, grads = run(jax.tree.map(jnp.asarray, hyper))
    return float(value), grads


# --------------------------------------------------------------------------------------------
# (a) finite differences of torch.optim, every optimizer
# --------------------------------------------------------------------------------------------

# (jopt name, differentiated hyperparameters, fixed arguments); one configuration of each
# optimizer in the fast pass, the others in the slow one.
FD_CASES = [
    pytest.param("sgd", {"lr": 0.05}, {}, marks=SLOW),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}, {}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, {"nesterov": True}),
    ("adam", {"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-3, "weight_decay": 0.01}, {}),
    pytest.param("adam", {"lr": 0.05, "betas": (0.8, 0.99)}, {"amsgrad": True}, marks=SLOW),
    ("adamw", {"lr": 0.05, "betas": (0.9, 0.999), "weight_decay": 0.1}, {}),
    ("adamax", {"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-3, "weight_decay": 0.01}, {}),
    ("nadam", {"lr": 0.05, "betas": (0.9, 0.999), "weight_decay": 0.01,
               "momentum_decay": 4e-3}, {}),
    pytest.param("nadam", {"lr": 0.05, "weight_decay": 0.1}, {"decoupled_weight_decay": True},
                 marks=SLOW),
    ("radam", {"lr": 0.05, "betas": (0.9, 0.999), "weight_decay": 0.01}, {}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.99, "eps": 1e-4, "weight_decay": 0.01,
                 "momentum": 0.5}, {}),
    pytest.param("rmsprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5}, {"centered": True},
                 marks=SLOW),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01,
                 "initial_accumulator_value": 0.1, "eps": 1e-4}, {}),
    ("adadelta", {"lr": 1.0, "rho": 0.9, "eps": 1e-4, "weight_decay": 0.01}, {}),
    ("asgd", {"lr": 0.05, "lambd": 1e-2, "alpha": 0.75, "weight_decay": 0.01}, {"t0": 5.0}),
    ("rprop", {"lr": 0.01, "etas": (0.5, 1.2)}, {}),
    ("adafactor", {"lr": 0.01, "beta2_decay": -0.8, "weight_decay": 0.01}, {}),
    # torch's sparse kernels take seconds on these 20 steps
    pytest.param("sparse_adam", {"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-3}, {}, marks=SLOW),
]


def _case_id(case: tuple[str, dict, dict]) -> str:
    name, hyper, fixed = case
    return "-".join([name, *fixed, *hyper])


@pytest.mark.parametrize(
    ("name", "hyper", "fixed"),
    FD_CASES,
    ids=[_case_id(c.values if hasattr(c, "values") else c) for c in FD_CASES],
)
def test_hypergradients_match_torch_finite_differences(
    name: str, hyper: dict[str, Any], fixed: dict[str, Any]
) -> None:
    value, grads = jopt_hypergrad(getattr(jopt, name), hyper, fixed)
    assert value == pytest.approx(torch_final_loss(name, {**fixed, **hyper}), rel=1e-10)
    for key in _keys(hyper):
        want = torch_fd(name, hyper, fixed, key)
        got = _value(grads, key)
        print(name, key, got, want, abs(got - want) / abs(want))
        assert got == pytest.approx(want, rel=FD_RTOL), key


@pytest.mark.slow
def test_muon_hypergradients_one_step_and_beyond() -> None:
    """Muon's Newton–Schulz iteration runs in bfloat16, as torch's does. After one step the loss
    is smooth in ``lr`` and ``weight_decay`` (the orthogonalized gradient does not depend on
    them) and the hypergradient is exact; after more, jopt differentiates the rounding as the
    identity, and torch's finite differences (of a function that is piecewise constant at
    bfloat16's resolution, smoothed by the difference step) agree only to about 2%."""
    hyper = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.1}
    params = {k: jnp.asarray(v) for k, v in start().items()}
    for steps, rtol in [(1, FD_RTOL), (5, 2e-2)]:
        _, grads = jax.jit(
            lambda h, steps=steps: jopt.hypergrad(jopt.muon, h, jax_loss, params, steps)
        )(jax.tree.map(jnp.asarray, hyper))
        for key in ["lr", "weight_decay"]:
            v = hyper[key]
            h = 1e-5 * v

            def f(x: float, key: str = key, steps: int = steps) -> float:
                return torch_final_loss("muon", {**hyper, key: x}, steps)

            want = (8 * (f(v + h) - f(v - h)) - (f(v + 2 * h) - f(v - 2 * h))) / (12 * h)
            assert float(grads[key]) == pytest.approx(want, rel=rtol), (steps, key)


@pytest.mark.parametrize("line_search_fn", [None, pytest.param("strong_wolfe", marks=SLOW)])
def test_lbfgs_hypergradient_in_forward_mode(line_search_fn: str | None) -> None:
    """L-BFGS steps in a ``lax.while_loop``, which JAX differentiates forward only: ``mode=
    "forward"`` works, and reverse mode says to use it. Its loss is smooth in ``lr`` only
    between the step's decisions (history updates, accepted trials, stopping rules), so the
    difference step is 1e-5 of ``lr``; 3 steps of 3 iterations stay clear of the tolerances."""
    params = {k: jnp.asarray(v) for k, v in start().items()}
    fixed = {"max_iter": 3, "line_search_fn": line_search_fn}
    value, grads = jax.jit(
        lambda h: jopt.hypergrad(jopt.lbfgs, h, jax_loss, params, 3, mode="forward", **fixed)
    )({"lr": 0.5})

    def f(x: float) -> float:
        return torch_final_loss("lbfgs", {"lr": x, **fixed}, 3)

    v, h = 0.5, 5e-6
    want = (8 * (f(v + h) - f(v - h)) - (f(v + 2 * h) - f(v - 2 * h))) / (12 * h)
    assert float(value) == pytest.approx(f(v), rel=1e-10)
    assert float(grads["lr"]) == pytest.approx(want, rel=FD_RTOL)
    with pytest.raises(ValueError, match="forward mode only"):
        jopt.hypergrad(jopt.lbfgs, {"lr": 0.5}, jax_loss, params, 3, **fixed)


# Schedules: the hyperparameters of a schedule, against torch's scheduler classes.
SCHEDULE_CASES = [
    (
        "cosine",
        {"lr": 0.1, "eta_min": 0.01},
        lambda lr, eta_min: jopt.sgd(
            lr=jopt.schedules.cosine_annealing_lr(lr, T_max=STEPS, eta_min=eta_min), momentum=0.9
        ),
        lambda h: ({"lr": h["lr"], "momentum": 0.9},
                   lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
                       opt, T_max=STEPS, eta_min=h["eta_min"])),
    ),
    (
        "exponential",
        {"lr": 0.05, "gamma": 0.9},
        lambda lr, gamma: jopt.adam(lr=jopt.schedules.exponential_lr(lr, gamma)),
        lambda h: ({"lr": h["lr"]},
                   lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=h["gamma"])),
    ),
    (
        "onecycle",
        {"max_lr": 0.1, "div_factor": 25.0, "final_div_factor": 1e2},
        lambda max_lr, div_factor, final_div_factor: jopt.sgd(
            lr=jopt.schedules.one_cycle_lr(max_lr, STEPS + 1, div_factor=div_factor,
                                           final_div_factor=final_div_factor)
        ),
        lambda h: ({"lr": h["max_lr"]},
                   lambda opt: torch.optim.lr_scheduler.OneCycleLR(
                       opt, max_lr=h["max_lr"], total_steps=STEPS + 1,
                       div_factor=h["div_factor"], final_div_factor=h["final_div_factor"],
                       cycle_momentum=False)),
    ),
]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_schedule_hypergradients_match_torch_schedulers(case: tuple) -> None:
    name, hyper, factory, torch_setup = case
    value, grads = jopt_hypergrad(factory, hyper, {})
    torch_name = "sgd" if name != "exponential" else "adam"
    kwargs, scheduler = torch_setup(hyper)
    assert value == pytest.approx(torch_final_loss(torch_name, kwargs, scheduler=scheduler),
                                  rel=1e-10)
    for key in hyper:
        v = hyper[key]
        h = 1e-3 * v

        def f(x: float, key: str = key) -> float:
            kwargs, scheduler = torch_setup({**hyper, key: x})
            return torch_final_loss(torch_name, kwargs, scheduler=scheduler)

        want = (8 * (f(v + h) - f(v - h)) - (f(v + 2 * h) - f(v - 2 * h))) / (12 * h)
        assert float(grads[key]) == pytest.approx(want, rel=FD_RTOL), key


# --------------------------------------------------------------------------------------------
# (b) torch's autograd through differentiable=True
# --------------------------------------------------------------------------------------------


def torch_autograd(
    name: str, hyper: dict[str, float], fixed: dict[str, Any], steps: int = STEPS
) -> tuple[dict[str, float], np.ndarray]:
    """d(loss after ``steps`` steps) / d(hyperparameters, initial parameters) by torch's autograd.

    torch's recipe for a differentiable step: hyperparameters as tensors that require grad,
    ``differentiable=True``, parameters that are non-leaf clones of leaves, gradients taken with
    ``create_graph=True``. The loss of each step reads a clone of the parameters, and the state
    tensors are cloned before each step: torch's step updates both in place, and autograd
    refuses a tensor it saved for the backward pass that was modified since.
    """
    hyp = {k: torch.tensor(v, requires_grad=True) for k, v in hyper.items()}
    leaf = torch.tensor(start()["w"], requires_grad=True)
    param = leaf.clone()
    opt = getattr(torch.optim, TORCH_CLASS[name])(
        [param], **fixed, **hyp, differentiable=True, foreach=False
    )
    for _ in range(steps):
        (param.grad,) = torch.autograd.grad(
            loss({"w": param.clone()}, torch), [param], create_graph=True
        )
        for state in opt.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.clone()
        opt.step()
    grads = torch.autograd.grad(loss({"w": param}, torch), [*hyp.values(), leaf])
    return {k: float(g) for k, g in zip(hyp, grads)}, grads[-1].numpy()


def jopt_autograd(
    name: str, hyper: dict[str, float], fixed: dict[str, Any]
) -> tuple[dict[str, Any], np.ndarray]:
    factory = getattr(jopt, name)

    def final(h: dict[str, Any], params: Any) -> jax.Array:
        run = jopt.unroll(factory(**fixed, **h), jax_loss, params, STEPS, remat=None)
        return jax_loss(run.params)

    params = {k: jnp.asarray(v) for k, v in start().items()}
    hgrads, pgrads = jax.jit(jax.grad(final, argnums=(0, 1)))(
        jax.tree.map(jnp.asarray, hyper), params
    )
    return hgrads, np.asarray(pgrads["w"])


# What torch's differentiable=True differentiates: the hyperparameters its step takes as tensors
# (RMSprop and Adagrad pass lr to ``addcdiv_(..., value=-lr)``, which takes only a Number, so
# their lr is covered by the finite differences above), and the initial parameters.
AUTOGRAD_CASES = [
    ("sgd", {"lr": 0.05, "momentum": 0.9}, {}),
    ("rmsprop", {"eps": 1e-8, "momentum": 0.5}, {"lr": 0.01}),
    ("rmsprop", {"eps": 1e-8}, {"lr": 0.01, "alpha": 0.9, "centered": True}),
    ("adagrad", {"eps": 1e-10}, {"lr": 0.1, "lr_decay": 0.01}),
    ("adam", {"lr": 0.05, "eps": 1e-8, "weight_decay": 0.01}, {}),
]


def torch_fd_params(name: str, kwargs: dict[str, Any]) -> np.ndarray:
    """d(torch's final loss) / d(initial parameters), one 4-point difference per entry."""
    w = start()["w"]
    out = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        h = 1e-5 * abs(w[index])  # the loss bends fast in the parameters: a step of 1e-3 of
        # them leaves a truncation error of 1e-4 relative after 20 steps with momentum

        def f(x: float, index: tuple[int, ...] = index) -> float:
            moved = w.copy()
            moved[index] = x
            return torch_final_loss(name, kwargs, start={"w": moved})

        v = w[index]
        out[index] = (8 * (f(v + h) - f(v - h)) - (f(v + 2 * h) - f(v - 2 * h))) / (12 * h)
    return out


@pytest.mark.parametrize("case", AUTOGRAD_CASES, ids=[_case_id(c) for c in AUTOGRAD_CASES])
def test_hypergradients_match_torch_autograd(case: tuple[str, dict, dict]) -> None:
    name, hyper, fixed = case
    want, want_params = torch_autograd(name, hyper, fixed)
    got, got_params = jopt_autograd(name, hyper, fixed)
    for key in hyper:
        assert float(got[key]) == pytest.approx(want[key], rel=AUTOGRAD_RTOL), key
    if name == "sgd":
        # torch's SGD starts its momentum buffer as ``grad.detach().clone()``, so its autograd
        # misses the first step's path from the initial parameters through the buffer (the
        # hyperparameters are unaffected: the first gradient does not depend on them). The
        # initial parameters' gradient is held to finite differences of torch instead.
        want_params = torch_fd_params(name, {**fixed, **hyper})
        np.testing.assert_allclose(got_params, want_params, rtol=FD_RTOL, atol=1e-9)
    else:
        np.testing.assert_allclose(got_params, want_params, rtol=AUTOGRAD_RTOL, atol=1e-12)
