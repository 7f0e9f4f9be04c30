"""Hypergradient descent (Baydin et al., ICLR 2018): ``jopt.sgd_hd`` (SGD-HD, SGDN-HD) and
``jopt.adam_hd`` (Adam-HD) against the paper's algorithms written out in NumPy, step by step,
and the learning-rate update against ``jax.grad`` of the one-step loss with respect to the rate
(the quantity the update descends).

The NumPy references follow the paper's pseudo-code for SGD-HD, SGDN-HD and Adam-HD: the
rate update comes first, from the gradient and the previous update's derivative with respect
to the rate, ``grad_alpha_u = -d_{t-1}``; then the usual step with the new rate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loss, make_params, numpy_grads

import jopt

STEPS = 30


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def flat(tree: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(tree[k]) for k in sorted(tree)])


def reference_sgd_hd(
    params: dict[str, np.ndarray],
    lr: float,
    beta: float,
    mu: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """SGD-HD (mu = 0), SGD-HD with momentum, SGDN-HD as the paper writes them, with torch's
    momentum (the first buffer is the gradient) and L2 decay in the gradient."""
    theta = {k: v.copy() for k, v in params.items()}
    alpha = lr
    grad_alpha_u = {k: np.zeros_like(v) for k, v in theta.items()}  # d u_{t-1} / d alpha
    v = None
    trajectory, rates = [], []
    for _ in range(STEPS):
        g = numpy_grads(theta)
        g = {k: g[k] + weight_decay * theta[k] for k in g}
        h = float(flat(g) @ flat(grad_alpha_u))  # h_t = g_t . grad_alpha u_{t-1}
        alpha = alpha - beta * h  # alpha_t = alpha_{t-1} - beta h_t
        if mu:
            v = dict(g) if v is None else {k: mu * v[k] + g[k] for k in g}
            d = {k: g[k] + mu * v[k] for k in g} if nesterov else v
        else:
            d = g
        theta = {k: theta[k] - alpha * d[k] for k in theta}  # u_t = -alpha_t d_t
        grad_alpha_u = {k: -d[k] for k in d}
        trajectory.append(theta)
        rates.append(alpha)
    return trajectory, rates


def reference_adam_hd(
    params: dict[str, np.ndarray],
    lr: float,
    beta: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Adam-HD as the paper writes it."""
    theta = {k: v.copy() for k, v in params.items()}
    alpha = lr
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    s = {k: np.zeros_like(v) for k, v in theta.items()}
    grad_alpha_u = {k: np.zeros_like(v) for k, v in theta.items()}
    trajectory, rates = [], []
    for t in range(1, STEPS + 1):
        g = numpy_grads(theta)
        h = float(flat(g) @ flat(grad_alpha_u))
        alpha = alpha - beta * h
        m = {k: b1 * m[k] + (1 - b1) * g[k] for k in g}
        s = {k: b2 * s[k] + (1 - b2) * g[k] ** 2 for k in g}
        m_hat = {k: m[k] / (1 - b1**t) for k in m}
        s_hat = {k: s[k] / (1 - b2**t) for k in s}
        d = {k: m_hat[k] / (np.sqrt(s_hat[k]) + eps) for k in m}
        theta = {k: theta[k] - alpha * d[k] for k in theta}
        grad_alpha_u = {k: -d[k] for k in d}
        trajectory.append(theta)
        rates.append(alpha)
    return trajectory, rates


def run_jopt(opt: Any, params: dict[str, np.ndarray]) -> tuple[list[Any], list[float]]:
    """jopt's steps on the same closed-form gradients, and the rate after each."""

    @jax.jit
    def step(p: Any, state: Any) -> tuple[Any, Any]:
        grads = jax.tree.map(jnp.asarray, jax.pure_callback(
            lambda q: numpy_grads({k: np.asarray(v) for k, v in q.items()}), p, p))
        updates, state = opt.update(grads, state, p)
        return jopt.apply_updates(p, updates), state

    p = {k: jnp.asarray(v) for k, v in params.items()}
    state = opt.init(p)
    trajectory, rates = [], []
    for _ in range(STEPS):
        p, state = step(p, state)
        trajectory.append(p)
        rates.append(float(hd_state(state).lr))
    return trajectory, rates


def hd_state(state: Any) -> jopt.ScaleByHypergradientState:
    kind = jopt.ScaleByHypergradientState
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind))
             if isinstance(s, kind)]
    (only,) = found
    return only


CASES = [
    ("sgd-hd", dict(lr=0.05, hypergrad_lr=1e-3), dict(lr=0.05, beta=1e-3)),
    ("sgd-hd-decay", dict(lr=0.05, hypergrad_lr=1e-3, weight_decay=0.1),
     dict(lr=0.05, beta=1e-3, weight_decay=0.1)),
    ("sgd-hd-momentum", dict(lr=0.02, momentum=0.9, hypergrad_lr=1e-4),
     dict(lr=0.02, beta=1e-4, mu=0.9)),
    ("sgdn-hd", dict(lr=0.02, momentum=0.9, nesterov=True, hypergrad_lr=1e-4),
     dict(lr=0.02, beta=1e-4, mu=0.9, nesterov=True)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sgd_hd_follows_the_paper(case: tuple[str, dict, dict]) -> None:
    _, ours, theirs = case
    params = make_params("float64")
    want, want_rates = reference_sgd_hd(params, **theirs)
    got, got_rates = run_jopt(jopt.sgd_hd(**ours), params)
    assert abs(want_rates[-1] - ours["lr"]) > 1e-3 * ours["lr"]  # the rate did move
    np.testing.assert_allclose(got_rates, want_rates, rtol=1e-10)
    for a, b in zip(got, want):
        np.testing.assert_allclose(flat({k: np.asarray(v) for k, v in a.items()}), flat(b),
                                   rtol=1e-10, atol=1e-12)


def test_adam_hd_follows_the_paper() -> None:
    params = make_params("float64")
    want, want_rates = reference_adam_hd(params, lr=0.02, beta=1e-3, b1=0.8, b2=0.99)
    got, got_rates = run_jopt(
        jopt.adam_hd(lr=0.02, betas=(0.8, 0.99), hypergrad_lr=1e-3), params
    )
    assert abs(want_rates[-1] - 0.02) > 1e-4
    np.testing.assert_allclose(got_rates, want_rates, rtol=1e-10)
    for a, b in zip(got, want):
        np.testing.assert_allclose(flat({k: np.asarray(v) for k, v in a.items()}), flat(b),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("opt", "weight_decay"),
    [
        (jopt.sgd_hd(lr=0.05, momentum=0.9, nesterov=True, hypergrad_lr=1e-3), 0.0),
        (jopt.adam_hd(lr=0.02, weight_decay=0.1, hypergrad_lr=1e-3), 0.1),
    ],
    ids=["sgdn-hd", "adam-hd-decay"],
)
def test_rate_update_is_the_one_step_hypergradient(opt: Any, weight_decay: float) -> None:
    """``alpha_t - alpha_{t-1} = -beta d f(theta_{t-2} - a d_{t-1}) / d a`` at
    ``a = alpha_{t-1}``: the derivative of the loss (with its L2 term, which the gradient
    carries) at the point the last step reached, with respect to the rate that step used."""
    params = {k: jnp.asarray(v) for k, v in make_params("float64").items()}

    def objective(p: Any) -> jax.Array:
        l2 = sum(jnp.sum(x * x) for x in jax.tree.leaves(p))
        return loss(p, jnp) + 0.5 * weight_decay * l2

    @jax.jit
    def step(p: Any, state: Any) -> tuple[Any, Any]:
        updates, state = opt.update(jax.grad(loss)(p, jnp), state, p)
        return jopt.apply_updates(p, updates), state

    one_step = jax.jit(jax.grad(lambda a, p, d: objective(jax.tree.map(
        lambda x, y: x - a * y, p, d))))
    state = opt.init(params)
    p = params
    checked = 0
    for t in range(12):
        before, previous = p, hd_state(state)
        p, state = step(p, state)
        now = hd_state(state)
        if t > 0:
            # theta_{t-1} = before, reached from theta_{t-2} = before + alpha_{t-1} d_{t-1}.
            start = jax.tree.map(lambda x, d, a=previous.lr: x + a * d, before,
                                 previous.prev_direction)
            hyper = one_step(previous.lr, start, previous.prev_direction)
            beta = 1e-3
            assert float(now.lr - previous.lr) == pytest.approx(-beta * float(hyper), rel=1e-9)
            assert float(hyper) != 0.0
            checked += 1
    assert checked == 11


def test_first_step_is_the_plain_optimizer() -> None:
    """h_1 = 0: the first step is SGD's (Adam's) with the initial rate."""
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    grads = {"w": jnp.asarray([0.3, 0.1, -0.2])}
    for hd, plain in [
        (jopt.sgd_hd(lr=0.1, momentum=0.9, hypergrad_lr=1.0), jopt.sgd(lr=0.1, momentum=0.9)),
        (jopt.adam_hd(lr=0.1, hypergrad_lr=1.0), jopt.adam(lr=0.1)),
    ]:
        got, _ = hd.update(grads, hd.init(params), params)
        want, _ = plain.update(grads, plain.init(params), params)
        np.testing.assert_allclose(got["w"], want["w"], rtol=1e-14)


def test_scale_by_hypergradient_composes_and_checks() -> None:
    """The transform drops into ``jopt.chain`` (and optax's); its rate is state one may read
    and assign; the optimizers check their arguments in torch's words."""
    opt = jopt.chain(jopt.clip_by_global_norm(1.0),
                     jopt.scale_by_hypergradient(jopt.identity(), lr=0.1, hypergrad_lr=0.01))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    assert float(hd_state(state).lr) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="Invalid hypergrad_lr value: -1"):
        jopt.sgd_hd(hypergrad_lr=-1.0)
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
        jopt.adam_hd(lr=-0.1)
    with pytest.raises(TypeError, match="not a schedule"):
        jopt.sgd_hd(lr=jopt.schedules.exponential_lr(0.1, 0.9))
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        jopt.sgd_hd(nesterov=True)


def test_hypergradient_descent_is_itself_differentiable() -> None:
    """The HD optimizers' own hyperparameters (the initial rate and ``hypergrad_lr``) have
    hypergradients too (``jopt.hypergrad``), equal to central differences of the same runs."""
    params = {k: jnp.asarray(v) for k, v in make_params("float64").items()}
    f = jax.jit(lambda h: jopt.hypergrad(jopt.sgd_hd, h, lambda p: loss(p, jnp), params, 20,
                                         momentum=0.9))
    hyper = {"lr": 0.02, "hypergrad_lr": 1e-4}
    _, grads = f(hyper)
    for key in hyper:
        h = 1e-4 * hyper[key]
        up, down = f({**hyper, key: hyper[key] + h})[0], f({**hyper, key: hyper[key] - h})[0]
        assert float(grads[key]) == pytest.approx(float(up - down) / (2 * h), rel=1e-6)


@pytest.mark.parametrize("factory", [jopt.sgd_hd, jopt.adam_hd], ids=["sgd-hd", "adam-hd"])
def test_sweep_runs_start_from_their_own_rates(factory: Any) -> None:
    """``jopt.train.sweep`` writes each run's ``lr`` into the injected state after ``init``:
    the rule starts from that rate, so run ``k`` equals ``fit`` with the optimizer built at
    ``lrs[k]``, and the runs differ."""
    from jopt.train import fit, init_model, load_iris, sweep

    with jax.enable_x64(False):
        data, lrs, epochs = load_iris(), [0.003, 0.03], 2
        swept = sweep(factory, data, lrs, epochs=epochs, l2=1e-3, hypergrad_lr=1e-4)
        model = init_model(swept_model(data), 0)
        for k, lr in enumerate(lrs):
            opt = jopt.inject_hyperparams(factory)(lr=lr, hypergrad_lr=1e-4)
            alone = fit(model, opt, data, epochs=epochs, l2=1e-3)
            got = jax.tree.map(lambda x, k=k: np.asarray(x)[k], swept.state)
            np.testing.assert_allclose(float(hd_state(got.opt_state).lr),
                                       float(hd_state(alone.state.opt_state).lr), rtol=1e-5)
            for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(got.params)):
                np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(alone.history["test_loss"], swept.history["test_loss"][k],
                                       rtol=1e-4)
        rates = np.asarray(hd_state(swept.state.opt_state).lr)
        assert rates[1] > 2 * rates[0]  # each run kept its own rate


def swept_model(data: Any) -> Any:
    """The model ``sweep`` trains by default: the 4-16-3 MLP."""
    from jopt.train.model import MLPFactory

    return MLPFactory(data.num_features, (16,), data.num_classes)
