"""``jopt.unroll`` and ``jopt.hypergrad``: rematerialisation changes memory, never numbers;
truncation differentiates the last steps only; batches, injected hyperparameters and forward
mode give what a plain loop gives.

Memory is checked structurally, from XLA's own accounting of the compiled program
(``memory_analysis().temp_size_in_bytes``, the scratch it allocates), never by timing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jopt

X = jax.random.normal(jax.random.PRNGKey(0), (32, 16))
Y = jnp.sin(X[:, :4])
PARAMS = {"w": jnp.full((16, 4), 0.1), "b": jnp.zeros(4)}


def model_loss(params: Any, batch: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    x, y = (X, Y) if batch is None else batch
    return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)


def optimizer(hyper: dict[str, Any]) -> jopt.GradientTransformation:
    return jopt.sgd(lr=hyper["lr"], momentum=hyper["momentum"])


def final_loss(hyper: dict[str, Any], steps: int, **kw: Any) -> jax.Array:
    return model_loss(jopt.unroll(optimizer(hyper), model_loss, PARAMS, steps, **kw).params)


HYPER = {"lr": jnp.asarray(0.1), "momentum": jnp.asarray(0.9)}


def close(rtol: float) -> Any:
    def check(a: Any, b: Any) -> None:
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol), a, b)

    return check


def test_unroll_equals_a_python_loop() -> None:
    opt = jopt.sgd(lr=0.1, momentum=0.9)
    params, state = PARAMS, opt.init(PARAMS)
    losses = []
    step = jax.jit(lambda p, s: (jax.value_and_grad(model_loss)(p), s))
    for _ in range(7):
        (value, grads), state = step(params, state)
        updates, state = opt.update(grads, state, params)
        params = jopt.apply_updates(params, updates)
        losses.append(value)
    run = jax.jit(lambda p: jopt.unroll(opt, model_loss, p, 7))(PARAMS)
    close(1e-6)((run.params, run.state, run.losses), (params, state, jnp.stack(losses)))


@pytest.mark.parametrize("remat", [pytest.param("step", marks=pytest.mark.slow), "sqrt", 7])
def test_remat_does_not_change_the_hypergradient(remat: Any) -> None:
    """Blocks of 7 over 20 steps leave a remainder block of 6; "sqrt" is blocks of 5."""
    with jax.enable_x64(True):
        hyper = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), HYPER)
        params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), PARAMS)

        def final(h: dict[str, Any], remat: Any) -> jax.Array:
            run = jopt.unroll(optimizer(h), model_loss, params, 20, remat=remat)
            return model_loss(run.params) + 0.1 * jnp.sum(run.losses)

        plain = jax.jit(jax.value_and_grad(final), static_argnums=1)(hyper, None)
        other = jax.jit(jax.value_and_grad(final), static_argnums=1)(hyper, remat)
        assert abs(float(plain[1]["lr"])) > 1e-6
        close(1e-12)(other, plain)


def _temp_bytes(steps: int, **kw: Any) -> int:
    compiled = jax.jit(jax.grad(lambda h: final_loss(h, steps, **kw))).lower(HYPER).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_bounds_the_memory_of_the_backward_pass() -> None:
    """Without remat the backward pass keeps every step's residuals: scratch grows like T.
    Checkpointing each step keeps one carry per step (less, still like T); blocks of sqrt(T)
    keep sqrt(T) carries and one block's residuals: 4x the steps, about 2x the scratch."""
    plain = {t: _temp_bytes(t, remat=None) for t in (64, 256)}
    step = _temp_bytes(256, remat="step")
    sqrt = {t: _temp_bytes(t, remat="sqrt") for t in (64, 256)}
    assert plain[256] > 3.5 * plain[64]  # linear in T
    assert step < plain[256] / 2
    assert sqrt[256] < step / 2
    assert sqrt[256] < 2.5 * sqrt[64]  # like sqrt(T)


def test_truncation_keeps_no_residuals_of_the_steps_before() -> None:
    truncated = _temp_bytes(256, remat=None, truncate=8)
    assert truncated < 1.5 * _temp_bytes(8, remat=None)


def test_truncate_differentiates_the_last_steps_only() -> None:
    """The truncated hypergradient is that of the last K steps from where the first T - K left
    the parameters and state, taken as constants."""
    head = jax.jit(lambda h: jopt.unroll(optimizer(h), model_loss, PARAMS, 12))(HYPER)

    @jax.jit
    @jax.grad
    def tail_only(h: dict[str, Any]) -> jax.Array:
        run = jopt.unroll(optimizer(h), model_loss, head.params, 8, state=head.state)
        return model_loss(run.params)

    def grad(**kw: Any) -> Any:
        return jax.jit(jax.grad(lambda h: final_loss(h, 20, **kw)))(HYPER)

    got = grad(truncate=8)
    close(1e-5)(got, tail_only(HYPER))
    full = grad()
    assert not np.allclose(full["lr"], got["lr"], rtol=1e-2)


@pytest.mark.slow
def test_batches_feed_one_step_each() -> None:
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    xs = jax.vmap(lambda k: jax.random.normal(k, (8, 16)))(keys)
    batches = (xs, jnp.sin(xs[..., :4]))
    opt = jopt.sgd(lr=0.1)
    params, state = PARAMS, opt.init(PARAMS)
    for t in range(6):
        grads = jax.jit(jax.grad(model_loss))(params, (batches[0][t], batches[1][t]))
        updates, state = opt.update(grads, state, params)
        params = jopt.apply_updates(params, updates)
    for remat in (None, 4):
        run = jax.jit(
            lambda p, b, remat=remat: jopt.unroll(opt, model_loss, p, 6, batches=b, remat=remat)
        )(PARAMS, batches)
        close(1e-6)(run.params, params)
    with pytest.raises(ValueError, match="leading axis of steps=5"):
        jopt.unroll(opt, model_loss, PARAMS, 5, batches=batches)


@pytest.mark.slow
def test_injected_hyperparameters_are_differentiable_state() -> None:
    """``jax.grad`` with respect to ``state.hyperparams`` of an ``inject_hyperparams``
    optimizer equals the hypergradient through the factory's arguments."""
    opt = jopt.inject_hyperparams(jopt.sgd)(lr=0.1, momentum=0.9)

    @jax.jit
    @jax.grad
    def through_state(lr: jax.Array) -> jax.Array:
        state = opt.init(PARAMS)
        state.hyperparams["lr"] = lr
        return model_loss(jopt.unroll(opt, model_loss, PARAMS, 10, state=state).params)

    _, want = jax.jit(
        lambda h: jopt.hypergrad(jopt.sgd, h, model_loss, PARAMS, 10, momentum=0.9)
    )({"lr": 0.1})
    np.testing.assert_allclose(through_state(jnp.asarray(0.1)), want["lr"], rtol=1e-5)


def test_forward_mode_equals_reverse_mode() -> None:
    hyper = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}

    @jax.jit
    def both(h: dict[str, Any]) -> Any:
        rev = jopt.hypergrad(jopt.sgd, h, model_loss, PARAMS, 10)
        return rev, jopt.hypergrad(jopt.sgd, h, model_loss, PARAMS, 10, mode="forward")

    rev, fwd = both(hyper)
    close(1e-5)(fwd, rev)


def test_bad_arguments_raise() -> None:
    opt = jopt.sgd(lr=0.1)
    with pytest.raises(ValueError, match="remat must be"):
        jopt.unroll(opt, model_loss, PARAMS, 4, remat="blocks")
    with pytest.raises(ValueError, match="steps must be"):
        jopt.unroll(opt, model_loss, PARAMS, -1)
    with pytest.raises(ValueError, match="truncate must be"):
        jopt.unroll(opt, model_loss, PARAMS, 4, truncate=-2)
    with pytest.raises(ValueError, match="mode must be"):
        jopt.hypergrad(jopt.sgd, {"lr": 0.1}, model_loss, PARAMS, 4, mode="backward")
    with pytest.raises(ValueError, match="pass meta_loss"):
        jopt.hypergrad(jopt.sgd, {"lr": 0.1}, model_loss, PARAMS, 1, batches=(X[None], Y[None]))


@pytest.mark.slow
def test_hypergrad_memory_benchmark_runs(tmp_path: Any) -> None:
    """``benchmarks/hypergrad_memory.py`` at a tiny size: every variant compiles and runs, the
    exact ones agree, and the JSON is written."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import hypergrad_memory

    payload = hypergrad_memory.main(["--quick", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "hypergrad_memory.json").read_text())
    assert written["benchmark"] == "hypergrad_memory"
    assert set(payload["results"]) == {"none", "step", "sqrt", "truncate=4"}
    assert payload["remat_relative_spread"] < 1e-4
    assert all(r["temp_bytes"] > 0 for r in payload["results"].values())
