"""Pruning during training: keep_pruned / masked_updates hold pruned weights at bitwise zero
under every optimizer and follow torch's pruned training; gradual magnitude pruning (Zhu &
Gupta's schedule) recomputes torch's global L1 masks inside jit and vmap; Iris at 50% sparsity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loss
from flax import nnx

import jopt
import jopt.prune as jp
from jopt.train import MLP, fit, load_iris
from jopt.train.recipes import OPTIMIZERS, make_optimizer

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch")
P = pytest.importorskip("torch.nn.utils.prune")


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct magnitudes everywhere (tie-free masks), a matrix, a vector and a 3-d leaf."""
    rng = np.random.default_rng(seed)
    sizes = {"w": (4, 3), "b": (3,), "t": (2, 3, 2)}
    total = sum(int(np.prod(s)) for s in sizes.values())
    flat = (rng.permutation(total) + 1.0) / total * rng.choice([-1.0, 1.0], total)
    out, start = {}, 0
    for k, s in sizes.items():
        n = int(np.prod(s))
        out[k] = flat[start:start + n].reshape(s).astype(np.float32)
        start += n
    return out


def _bits(x: jax.Array) -> np.ndarray:
    return np.asarray(x).view(np.uint32)


# --------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------


def test_polynomial_sparsity_is_zhu_gupta():
    s_i, s_f, t0, n, dt = 0.1, 0.8, 5, 7, 3
    schedule = jopt.schedules.polynomial_sparsity(s_f, n, dt, t0, s_i)
    steps = np.arange(0, t0 + n * dt + 10)
    tc = np.clip(steps, t0, t0 + n * dt)
    formula = s_f + (s_i - s_f) * (1 - (tc - t0) / (n * dt)) ** 3
    host = np.array([schedule(int(t)) for t in steps])
    np.testing.assert_allclose(host, formula, rtol=1e-15, atol=1e-15)
    traced = jax.jit(jax.vmap(schedule))(jnp.asarray(steps))
    np.testing.assert_allclose(np.asarray(traced), formula, rtol=1e-6, atol=1e-7)
    assert host[0] == pytest.approx(s_i) and host[-1] == s_f


def test_polynomial_sparsity_checks():
    with pytest.raises(ValueError, match="final_sparsity should be a float in the range"):
        jopt.schedules.polynomial_sparsity(1.5, 10)
    with pytest.raises(ValueError, match="num_updates should be a positive integer"):
        jopt.schedules.polynomial_sparsity(0.5, 0)


# --------------------------------------------------------------------------------------------
# Every optimizer keeps pruned weights at bitwise zero
# --------------------------------------------------------------------------------------------


def _train(opt, params, steps=100):
    def one(carry, _):
        p, s = carry
        g = jax.grad(loss)(p, jnp)
        u, s = opt.update(g, s, p)
        return (jopt.apply_updates(p, u), s), None

    return jax.lax.scan(one, (params, opt.init(params)), length=steps)[0][0]


FAST = ("sgd", "adam", "adafactor", "muon")  # the others run in CI's slow pass


@pytest.mark.parametrize("name", [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in OPTIMIZERS])
def test_every_optimizer_keeps_pruned_entries_at_zero(name):
    params = _params()
    mask = jp.l1_unstructured(params, 0.5)
    pruned = jp.apply_mask(params, mask)

    @jax.jit
    def runs(params, pruned):
        inner = make_optimizer(name)
        torch_like = jopt.chain(jopt.masked_updates(mask), inner, jopt.keep_pruned(mask))
        # keep_pruned alone, from unpruned weights (the first step zeroes them); and
        # masked_updates alone, from pruned weights.
        return (_train(torch_like, pruned),
                _train(jopt.chain(inner, jopt.keep_pruned(mask)), params),
                _train(jopt.chain(inner, jopt.masked_updates(mask)), pruned),
                _train(inner, pruned))

    *kept, free = runs(params, pruned)
    for trained in kept:
        for k in params:
            m = np.asarray(mask[k])
            assert (_bits(trained[k])[~m] == 0).all(), (name, k)  # +0.0, every bit
            assert not np.array_equal(np.asarray(trained[k])[m], params[k][m])  # it trained
    # Without the mask the optimizer does move pruned weights: the check above can fail.
    assert any((_bits(free[k])[~np.asarray(mask[k])] != 0).any() for k in params)


def test_masked_updates_stops_nan_at_pruned_entries():
    params = {"w": jnp.ones(4)}
    mask = {"w": jnp.array([True, False, True, False])}
    updates = {"w": jnp.array([1.0, jnp.nan, 2.0, jnp.inf])}
    out, _ = jopt.masked_updates(mask).update(updates, None, params)
    np.testing.assert_array_equal(np.asarray(out["w"]), [1.0, 0.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="mask"):
        jopt.keep_pruned({"v": jnp.ones(4, bool)}).update(updates, None, params)


# --------------------------------------------------------------------------------------------
# torch's pruned training, step for step
# --------------------------------------------------------------------------------------------


def _regression(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.standard_normal((16, 4)).astype(np.float32)
    w = ((rng.permutation(24) + 1.0) / 24 * rng.choice([-1.0, 1.0], 24)).reshape(4, 6)
    return x, y, {"weight": w.astype(np.float32), "bias": np.zeros(4, np.float32)}


TORCH_RUNS = [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True),
     lambda: jopt.sgd(0.05, momentum=0.9, weight_decay=0.1, nesterov=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.05), lambda: jopt.adam(0.02, weight_decay=0.05)),
    pytest.param("AdamW", dict(lr=0.02), lambda: jopt.adamw(0.02), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("cls,kwargs,make", TORCH_RUNS, ids=["SGD", "Adam", "AdamW"])
def test_follows_torch_pruned_training(cls, kwargs, make):
    """torch: prune.l1_unstructured + clip_grad_norm_ + an optimizer on ``weight_orig``;
    jopt: the pruned weights and chain(masked_updates, clip, optimizer, keep_pruned)."""
    x, y, params = _regression()
    linear = torch.nn.Linear(6, 4)
    linear.weight.data = torch.tensor(params["weight"])
    linear.bias.data = torch.tensor(params["bias"])
    P.l1_unstructured(linear, "weight", 0.5)
    topt = getattr(torch.optim, cls)(linear.parameters(), **kwargs)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for _ in range(30):
        topt.zero_grad()
        torch.mean((linear(tx) - ty) ** 2).backward()
        torch.nn.utils.clip_grad_norm_(linear.parameters(), 0.5)
        topt.step()

    mask = jp.l1_unstructured(params, 0.5, where={"weight": True, "bias": False})
    opt = jopt.chain(jopt.masked_updates(mask), jopt.clip_by_global_norm(0.5), make(),
                     jopt.keep_pruned(mask))

    def objective(p):
        return jnp.mean((x @ p["weight"].T + p["bias"] - y) ** 2)

    @jax.jit
    def run(p):
        def one(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(objective)(p), s, p)
            return (jopt.apply_updates(p, u), s), None

        return jax.lax.scan(one, (p, opt.init(p)), length=30)[0][0]

    got = run(jp.apply_mask(params, mask))
    np.testing.assert_array_equal(np.asarray(mask["weight"]), linear.weight_mask.numpy() == 1)
    # torch's ``weight`` is recomputed before each forward: after the last step it is stale.
    effective = (linear.weight_orig * linear.weight_mask).detach().numpy()
    np.testing.assert_allclose(np.asarray(got["weight"]), effective, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(got["bias"]), linear.bias.detach().numpy(),
                               rtol=2e-5, atol=2e-6)
    # torch's effective weight is orig * mask: zero there; jopt's parameter is zero itself.
    assert (_bits(got["weight"])[~np.asarray(mask["weight"])] == 0).all()


# --------------------------------------------------------------------------------------------
# Gradual magnitude pruning: torch's global L1 masks, inside jit and vmap
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_masks_are_torchs(scope):
    """Each mask update equals torch's L1 pruning of the weights after the step, pruning the
    newly due count among the entries left (a PruningContainer), globally or per tensor."""
    params = _params(1)
    where = jp.matrices(params)  # "w" and "t"; the bias is never pruned
    t0, n, dt = 2, 4, 3
    opt = jopt.gradual_pruning(0.75, n, dt, t0, initial_sparsity=0.1, scope=scope, where=where)
    schedule = jopt.schedules.polynomial_sparsity(0.75, n, dt, t0, 0.1)
    update = jax.jit(opt.update)
    rng = np.random.default_rng(0)
    state, p = opt.init(params), params
    names = [k for k in params if where[k]]
    modules = {k: torch.nn.Linear(1, 1) for k in names}
    pruned_before = dict.fromkeys(names + ["global"], 0)
    for step in range(t0 + n * dt + 4):
        u = {k: (0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in p.items()}
        new_u, state = update(u, state, p)
        after = {k: np.asarray(p[k]) + u[k] for k in p}
        due = step >= t0 and (step - t0) % dt == 0 and step <= t0 + n * dt
        if due:  # torch, on the same weights after the step
            for k in names:
                if not P.is_pruned(modules[k]):
                    modules[k].weight = torch.nn.Parameter(torch.tensor(after[k]))
                else:
                    modules[k].weight_orig.data = torch.tensor(after[k])
                    for hook in modules[k]._forward_pre_hooks.values():
                        hook(modules[k], None)  # weight = orig * mask, as a forward would
            s = float(schedule(step))
            if scope == "global":
                total = sum(after[k].size for k in names)
                amount = round(s * total) - pruned_before["global"]
                pruned_before["global"] += amount
                P.global_unstructured([(modules[k], "weight") for k in names],
                                      pruning_method=P.L1Unstructured, amount=amount)
            else:
                for k in names:
                    amount = round(s * after[k].size) - pruned_before[k]
                    pruned_before[k] += amount
                    P.l1_unstructured(modules[k], "weight", amount)
        for k in names:
            if P.is_pruned(modules[k]):
                expected = modules[k].weight_mask.numpy() == 1
                np.testing.assert_array_equal(np.asarray(state.mask[k]), expected,
                                              err_msg=f"{k} step {step}")
        assert bool(jnp.all(state.mask["b"]))
        p = jopt.apply_updates(p, new_u)
        for k in p:
            assert (_bits(p[k])[~np.asarray(state.mask[k])] == 0).all()
    final = sum(int(np.sum(~np.asarray(state.mask[k]))) for k in names)
    assert final == sum(pruned_before[k] for k in pruned_before)


def test_magnitude_pruning_under_vmap_equals_single_runs():
    params = _params(2)
    lrs = jnp.array([0.01, 0.05, 0.2])

    def run(lr):
        opt = jopt.chain(jopt.adam(lr), jopt.gradual_pruning(0.6, 5, 4, 3, where=jp.matrices))
        return _train(opt, params, steps=40)

    batched = jax.jit(jax.vmap(run))(lrs)
    for i, lr in enumerate(lrs):
        single = jax.jit(run)(lr)
        for k in params:
            np.testing.assert_array_equal(np.asarray(batched[k][i]), np.asarray(single[k]))
        matrices = [k for k in params if np.ndim(params[k]) >= 2]
        zeros = sum(int(np.sum(_bits(single[k]) == 0)) for k in matrices)
        total = sum(params[k].size for k in matrices)
        assert zeros == round(0.6 * total)


def test_magnitude_pruning_checks():
    with pytest.raises(ValueError, match="scope"):
        jopt.magnitude_pruning(0.5, scope="row")
    with pytest.raises(ValueError, match="sparsity should be a float in the range"):
        jopt.magnitude_pruning(1.2)


# --------------------------------------------------------------------------------------------
# Iris at 50% sparsity
# --------------------------------------------------------------------------------------------


def _matrix_sparsity(params) -> float:
    return jp.sparsity(params, where=jp.matrices)


def test_iris_mlp_at_half_global_sparsity_keeps_its_accuracy():
    data = load_iris()
    model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))
    dense = fit(model, jopt.adam(lr=1e-2), data, epochs=100, batch_size=16, l2=1e-3)
    mask = jp.global_unstructured(dense.params, "l1", amount=0.5, where=jp.matrices)
    pruned = jp.apply_mask(dense.params, mask)
    tuned = fit((dense.graphdef, pruned), jopt.chain(jopt.adam(lr=1e-2), jopt.keep_pruned(mask)),
                data, epochs=50, batch_size=16, l2=1e-3)
    assert _matrix_sparsity(tuned.params) == 0.5  # 64 + 48 weights: exactly half of them
    assert tuned.final("test_accuracy") >= 0.9


@pytest.mark.slow
def test_iris_mlp_gradual_pruning_to_half_keeps_its_accuracy():
    data = load_iris()
    model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))
    gradual = jopt.chain(jopt.adam(lr=1e-2),
                         jopt.gradual_pruning(0.5, 10, 40, 80, where=jp.matrices))
    result = fit(model, gradual, data, epochs=100, batch_size=16, l2=1e-3)
    assert _matrix_sparsity(result.params) == 0.5
    assert result.final("test_accuracy") >= 0.9
