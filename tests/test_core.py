"""The functional core: hyperparameters as data, jit and vmap, tree checks, bad input, dtypes.

Numbers are checked against ``torch.optim`` (changing a hyperparameter in torch's
``param_groups`` is the oracle for changing it in ``state.hyperparams``) or against separate runs
of jopt itself (vmap).
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    RTOL,
    TORCH_CLASS,
    assert_tree_close,
    counted_step,
    from_torch,
    jax_grads,
    loss,
    make_params,
    numpy_grads,
    run_against_torch,
    to_torch,
    torch_grads,
    torch_optimizer,
)

import jopt

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch.optim")

# One configuration per optimizer that switches on most of its terms.
RICH = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.1},
    "momentum": {"lr": 0.02, "nesterov": True, "weight_decay": 0.1},
    "adam": {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
    "adamw": {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
    "rmsprop": {"lr": 1e-3, "momentum": 0.9, "centered": True, "weight_decay": 0.1},
    "adagrad": {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1},
}
NAMES = sorted(RICH)


def against_torch(tx, name, kwargs, steps, change=None) -> int:
    """:func:`run_against_torch` of ``tx`` and ``torch_optimizer(name, **kwargs)`` on the shared
    parameters; ``change(i, state, group)`` may edit both before step ``i``. Returns the number
    of traces of jopt's jitted step."""
    tparams = to_torch(make_params())
    reference = torch_optimizer(name, list(tparams.values()), **kwargs)
    return run_against_torch(tx, reference, tparams, steps, change=change).traces


# --------------------------------------------------------------------------------------------
# inject_hyperparams
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_changing_lr_takes_effect_without_recompiling(name: str) -> None:
    """``state.hyperparams["lr"]`` set to a Python float, to ``jnp.asarray(float)`` and to 0
    between calls of one jitted step: torch with the same ``param_groups`` edits is the oracle,
    and the step is traced once."""
    kwargs = RICH[name]
    tx = jopt.inject_hyperparams(getattr(jopt, name))(**kwargs)
    new_lrs = {5: kwargs["lr"] * 3, 10: jnp.asarray(kwargs["lr"] / 7), 15: 0.0}

    def change(i, state, group):
        if i in new_lrs:
            state.hyperparams["lr"] = new_lrs[i]
            group["lr"] = float(new_lrs[i])

    assert against_torch(tx, name, kwargs, 20, change) == 1


def test_betas_are_injected_as_a_tuple() -> None:
    kwargs = {"lr": 0.01, "betas": (0.8, 0.99)}
    tx = jopt.inject_hyperparams(jopt.adam)(**kwargs)
    state = tx.init(jax.tree.map(jnp.asarray, make_params()))
    betas = state.hyperparams["betas"]
    assert isinstance(betas, tuple)
    np.testing.assert_allclose([float(b) for b in betas], kwargs["betas"], rtol=1e-7)

    def change(i, state, group):
        if i == 6:
            state.hyperparams["betas"] = (0.5, 0.9)
            group["betas"] = (0.5, 0.9)

    assert against_torch(tx, "adam", kwargs, 12, change) == 1


@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop"])
def test_momentum_switched_off_and_on_as_torch(name: str) -> None:
    """An injected momentum set to 0 skips the buffer, as torch does, and resumes from it."""
    kwargs = {k: v for k, v in RICH[name].items() if k != "nesterov"}
    kwargs["momentum"] = 0.5
    tx = jopt.inject_hyperparams(getattr(jopt, name))(**kwargs)
    schedule = {3: 0.0, 6: 0.9}

    def change(i, state, group):
        if i in schedule:
            state.hyperparams["momentum"] = schedule[i]
            group["momentum"] = schedule[i]

    assert against_torch(tx, name, kwargs, 10, change) == 1


def test_momentum_injected_as_zero_array_then_raised() -> None:
    """SGD's momentum held as data that starts at 0: the first buffer is the gradient, as in
    torch (whose RMSprop cannot raise a momentum from 0, so SGD only)."""
    name = "sgd"
    kwargs = {"lr": 0.01, "momentum": jnp.asarray(0.0), "dampening": 0.5}
    tx = jopt.inject_hyperparams(jopt.sgd)(**kwargs)
    torch_kwargs = {**kwargs, "momentum": 0.0}

    def change(i, state, group):
        if i == 4:
            state.hyperparams["momentum"] = 0.9
            group["momentum"] = 0.9

    assert against_torch(tx, name, torch_kwargs, 8, change) == 1


def _has(state, kind) -> bool:
    found = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind))
    return any(isinstance(x, kind) for x in found)


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_static_when_zero(name: str) -> None:
    """momentum=0 stays static: no buffer (as in torch); any other value is injected data."""
    params = jax.tree.map(jnp.asarray, make_params())
    without = jopt.inject_hyperparams(getattr(jopt, name))(lr=0.1).init(params)
    assert "momentum" not in without.hyperparams
    assert not _has(without, jopt.TraceState)
    with_ = jopt.inject_hyperparams(getattr(jopt, name))(lr=0.1, momentum=0.9).init(params)
    assert "momentum" in with_.hyperparams
    assert _has(with_, jopt.TraceState)
    assert not _has(getattr(jopt, name)(lr=0.1).init(params), jopt.TraceState)


@pytest.mark.parametrize("name", NAMES)
def test_zero_weight_decay_is_static_unless_given(name: str) -> None:
    """A default weight_decay of 0 leaves the term out (torch: ``if weight_decay != 0``); one
    passed explicitly, even 0, is data that changes the next step without recompiling."""
    params = jax.tree.map(jnp.asarray, make_params())
    factory = jopt.inject_hyperparams(getattr(jopt, name))
    if name != "adamw":  # adamw's default is 0.01
        assert "weight_decay" not in factory(lr=0.1).init(params).hyperparams
    given = factory(lr=0.1, weight_decay=0.0)
    step, traces = counted_step(given)
    grads = jax.tree.map(jnp.zeros_like, params)  # only the decay can move the weights
    plain, _ = step(params, given.init(params), grads)
    state = given.init(params)
    state.hyperparams["weight_decay"] = 0.5
    decayed, _ = step(params, state, grads)
    assert len(traces) == 1
    assert not all(
        np.allclose(a, b) for a, b in zip(jax.tree.leaves(decayed), jax.tree.leaves(plain))
    )


SCHEDULES = {
    "optax-cosine": optax.cosine_decay_schedule(0.1, decay_steps=12, alpha=0.1),
    "exponential-lambda": lambda count: 0.1 * 0.8**count,
}


@pytest.mark.parametrize(
    ("name", "inject", "schedule"),
    [
        ("sgd", True, "optax-cosine"),
        ("adam", True, "exponential-lambda"),
        ("sgd", False, "exponential-lambda"),
        ("adam", False, "optax-cosine"),
    ],
)
def test_schedule_as_lr(name: str, inject: bool, schedule: str) -> None:
    """lr = schedule(t) on update t (0, 1, ...), as torch with the lr set before each step;
    one trace (the schedule's value has the same type in init and in the jitted update)."""
    lr = SCHEDULES[schedule]
    kwargs = {k: v for k, v in RICH[name].items() if k != "lr"}
    factory = getattr(jopt, name)
    tx = (jopt.inject_hyperparams(factory) if inject else factory)(lr=lr, **kwargs)
    seen = []

    def change(i, state, group):
        group["lr"] = float(lr(i))
        if inject and i > 0:
            seen.append(float(state.hyperparams["lr"]))

    assert against_torch(tx, name, kwargs, 15, change) == 1
    if inject:  # state.hyperparams shows the value the last update used
        np.testing.assert_allclose(seen, [float(lr(i)) for i in range(14)], rtol=1e-6)


def _run(tx, params, steps):
    """``steps`` closed-loop updates on the shared loss, in one ``lax.scan``."""

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(jax_grads(params), state, params)
        return (jopt.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params


# 8 learning rates around each configuration's own (vmap lanes round a little differently
# from a single run, so a configuration far beyond its stable range would amplify that).
FACTORS = np.geomspace(0.25, 4.0, 8)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "adagrad"])
def test_vmap_over_injected_lr_equals_separate_runs(name: str) -> None:
    params = jax.tree.map(jnp.asarray, make_params())
    tx = jopt.inject_hyperparams(getattr(jopt, name))(**RICH[name])

    @jax.jit
    def run(lr):
        state = tx.init(params)
        state.hyperparams["lr"] = lr

        def body(carry, _):
            p, s = carry
            updates, s = tx.update(jax_grads(p), s, p)
            return (jopt.apply_updates(p, updates), s), None

        (p, _), _ = jax.lax.scan(body, (params, state), None, length=10)
        return p

    lrs = jnp.asarray(RICH[name]["lr"] * FACTORS, jnp.float32)
    batched = jax.vmap(run)(lrs)
    for k, lr in enumerate(lrs):
        alone = run(lr)
        assert_tree_close(jax.tree.map(lambda x, k=k: x[k], batched), alone, 1e-5, f"lr={lr}")
    # The learning rates really differ in effect.
    assert not np.allclose(batched["w"][0], batched["w"][-1])


def test_vmap_over_lr_argument_equals_separate_runs() -> None:
    params = jax.tree.map(jnp.asarray, make_params())
    run = jax.jit(lambda lr: _run(jopt.adam(lr=lr, amsgrad=True), params, 10))
    lrs = jnp.asarray(1e-2 * FACTORS, jnp.float32)
    batched = jax.vmap(run)(lrs)
    for k, lr in enumerate(lrs):
        assert_tree_close(jax.tree.map(lambda x, k=k: x[k], batched), run(lr), 1e-5, f"lr={lr}")


def test_vmap_over_a_batch_of_parameter_trees() -> None:
    """An ensemble: vmap over 4 parameter trees equals 4 separate runs."""
    tx = jopt.adam(**RICH["adam"])
    trees = [jax.tree.map(jnp.asarray, make_params(seed=s)) for s in range(4)]
    run = jax.jit(lambda p: _run(tx, p, 5))
    batched = jax.vmap(run)(jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
    for k, tree in enumerate(trees):
        assert_tree_close(jax.tree.map(lambda x, k=k: x[k], batched), run(tree), 1e-6, f"#{k}")


def test_numpy_gradient_is_the_loss_gradient(dtype: str) -> None:
    """The closed-form gradient the oracle runs feed to both frameworks is ``loss``'s, by
    jax's and by torch's autodiff."""
    params = make_params(dtype)
    ours = numpy_grads(params)
    assert_tree_close(jax_grads(jax.tree.map(jnp.asarray, params)), ours, RTOL[dtype])
    tparams = to_torch(params)
    theirs = torch.autograd.grad(loss(tparams, torch), list(tparams.values()))
    assert_tree_close(dict(zip(tparams, (g.numpy() for g in theirs))), ours, RTOL[dtype])


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

NAN = float("nan")
BAD = [
    ("sgd", {"lr": -1.0}),
    ("sgd", {"momentum": -0.5}),
    ("sgd", {"weight_decay": -1e-4}),
    ("sgd", {"nesterov": True}),
    ("sgd", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    ("momentum", {"lr": -1e-3}),
    ("momentum", {"dampening": 0.5, "nesterov": True}),
    ("momentum", {"momentum": -0.9}),
    ("momentum", {"weight_decay": -0.1}),
    ("adam", {"lr": -1e-3}),
    ("adam", {"lr": NAN}),
    ("adam", {"eps": -1e-8}),
    ("adam", {"betas": (1.0, 0.999)}),
    ("adam", {"betas": (-0.1, 0.999)}),
    ("adam", {"betas": (0.9, 1.5)}),
    ("adam", {"betas": (0.9, NAN)}),
    ("adam", {"weight_decay": -0.1}),
    ("adamw", {"lr": -2.0}),
    ("adamw", {"eps": -1e-8}),
    ("adamw", {"betas": (0.9, 1.0)}),
    ("adamw", {"weight_decay": -0.01}),
    ("rmsprop", {"lr": -0.01}),
    ("rmsprop", {"eps": -1.0}),
    ("rmsprop", {"momentum": -0.1}),
    ("rmsprop", {"weight_decay": -0.1}),
    ("rmsprop", {"alpha": -0.99}),
    ("rmsprop", {"alpha": NAN}),
    ("adagrad", {"lr": -0.01}),
    ("adagrad", {"lr_decay": -0.1}),
    ("adagrad", {"weight_decay": -0.1}),
    ("adagrad", {"initial_accumulator_value": -1.0}),
    ("adagrad", {"eps": -1e-10}),
]
BAD_TYPE = [("sgd", {"lr": "0.1"}), ("adam", {"lr": None}), ("rmsprop", {"alpha": "0.9"})]


def _torch_error(name, kwargs, error):
    with pytest.raises(error) as raised:
        torch_optimizer(name, [torch.zeros(1, requires_grad=True)], **kwargs)
    return str(raised.value)


def _bad_id(case):
    return f"{case[0]}-" + "-".join(f"{k}={v}" for k, v in case[1].items())


@pytest.mark.parametrize("inject", [False, True], ids=["plain", "injected"])
@pytest.mark.parametrize(("name", "kwargs"), BAD, ids=[_bad_id(c) for c in BAD])
def test_invalid_hyperparameter_raises_torchs_value_error(name, kwargs, inject) -> None:
    message = _torch_error(name, kwargs, ValueError)
    factory = getattr(jopt, name)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        (jopt.inject_hyperparams(factory) if inject else factory)(**kwargs)


@pytest.mark.parametrize(("name", "kwargs"), BAD_TYPE, ids=[_bad_id(c) for c in BAD_TYPE])
def test_hyperparameter_of_wrong_type_raises_type_error_as_torch(name, kwargs) -> None:
    _torch_error(name, kwargs, TypeError)  # (its wording is Python's, per comparison operator)
    with pytest.raises(TypeError, match="not supported between instances"):
        getattr(jopt, name)(**kwargs)


def _probe_values(default):
    """Values torch might refuse in place of ``default``: a flipped flag, a negative number
    and NaN, and for a tuple each entry in turn set to -1, 1 or NaN."""
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, int | float):
        return [-1.0, NAN]
    if isinstance(default, tuple):
        return [default[:i] + (v,) + default[i + 1 :] for i in range(len(default))
                for v in (-1.0, 1.0, NAN)]  # fmt: skip
    return []


def _probes():
    """(name, argument, value, torch's exception or None): every argument jopt's factory shares
    with torch's constructor, each probe value given to torch alone (with the arguments jopt's
    defaults stand for)."""
    out = []
    for name, (cls, implied) in sorted(TORCH_CLASS.items()):
        theirs = inspect.signature(getattr(torch.optim, cls).__init__).parameters
        for arg in inspect.signature(getattr(jopt, name)).parameters:
            for value in _probe_values(implied.get(arg, theirs[arg].default)):
                try:
                    torch_optimizer(name, [torch.zeros(1, requires_grad=True)], **{arg: value})
                    error = None
                except Exception as e:  # noqa: BLE001 - whatever torch raises is the oracle
                    error = e
                out.append((name, arg, value, error))
    return out


PROBES = _probes()


def _probe_param(probe):
    name, arg, value, _ = probe
    return pytest.param(*probe, id=f"{name}-{arg}={value}")


@pytest.mark.parametrize(("name", "arg", "value", "error"), [_probe_param(p) for p in PROBES])
def test_what_torch_refuses_jopt_refuses_in_its_words(name, arg, value, error) -> None:
    """Each argument shared with torch, given a value torch may refuse: jopt raises torch's
    exception type and message, or nothing where torch raises nothing (plain and injected)."""
    factory = getattr(jopt, name)
    for build in (factory, jopt.inject_hyperparams(factory)):
        if error is None:
            build(**{arg: value})
            continue
        with pytest.raises(type(error)) as ours:
            build(**{arg: value})
        assert str(ours.value) == str(error)


def test_every_argument_torch_checks_has_a_row() -> None:
    """The table of bad inputs covers every argument the probes find torch checking (its rows
    hold torch's boundary values and combinations, which the probes do not)."""
    checked = {(name, arg) for name, arg, _, error in PROBES if error is not None}
    assert checked, "torch refused none of the probes"
    rows = {(name, key) for name, kwargs in BAD for key in kwargs}
    assert checked <= rows, sorted(checked - rows)


def _drop_b(g):
    return {k: v for k, v in g.items() if k != "b"}


def _add_z(g):
    return {**g, "z": jnp.zeros(2)}


def _transpose_w(g):
    return {**g, "w": g["w"].T}


def _nest(g):
    return {**g, "t": [g["t"]]}


MISMATCH = [
    ("missing", _drop_b, r"missing \['b'\]"),
    ("extra", _add_z, r"unexpected \['z'\]"),
    ("shape", _transpose_w, r"at \['w'\]: shape \(3, 4\) where the parameters have \(4, 3\)"),
    ("structure", _nest, r"\['t'\]"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(("kind", "mutate", "pattern"), MISMATCH, ids=[m[0] for m in MISMATCH])
@pytest.mark.parametrize("name", NAMES)
def test_mismatched_gradients_name_the_path(name, kind, mutate, pattern, jit) -> None:
    params = jax.tree.map(jnp.asarray, make_params())
    tx = getattr(jopt, name)(**RICH[name])
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(ValueError, match=pattern):
        update(mutate(params), tx.init(params), params)


@pytest.mark.parametrize(("kind", "mutate", "pattern"), MISMATCH, ids=[m[0] for m in MISMATCH])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_mismatch_found_without_params(name, kind, mutate, pattern) -> None:
    """Called without params, the gradients are checked against the state, or at the latest
    by apply_updates: nothing is broadcast silently."""
    params = jax.tree.map(jnp.asarray, make_params())
    tx = getattr(jopt, name)(lr=0.1)
    with pytest.raises(ValueError, match=pattern.replace("parameters", ".+")):
        updates, _ = tx.update(mutate(params), tx.init(params))
        jopt.apply_updates(params, updates)


# --------------------------------------------------------------------------------------------
# Non-finite gradients
# --------------------------------------------------------------------------------------------


def _poison(grads):
    grads = {k: v.copy() for k, v in grads.items()}
    grads["w"][0, 0] = np.nan
    grads["t"][1, 2, 1] = np.inf
    return grads


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_gradients_propagate_as_in_torch(name: str) -> None:
    """Not hidden: a NaN or inf gradient reaches the parameters exactly where torch's does,
    and the finite entries stay torch's. (Eager: the path without jit, against torch.)"""
    kwargs = RICH[name]
    tparams = to_torch(make_params())

    def grads(i, tparams):
        grads = torch_grads(tparams)
        if i == 1:
            grads = _poison(grads)
            for key, t in tparams.items():
                t.grad = torch.from_numpy(grads[key])
        return grads

    def same_nonfinite_entries(i, params, state):
        theirs = from_torch(tparams)
        for key, ours in params.items():
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs[key]), key)
            np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs[key]), key)

    reference = torch_optimizer(name, list(tparams.values()), **kwargs)
    run = run_against_torch(
        getattr(jopt, name)(**kwargs),
        reference,
        tparams,
        4,
        grads=grads,
        check=same_nonfinite_entries,
        jit=False,
    )
    assert not all(np.isfinite(x).all() for x in jax.tree.leaves(run.params))


POISONED = (2, 5)


@pytest.mark.parametrize("name", NAMES)
def test_skip_nonfinite_skips_the_step(name: str) -> None:
    """Wrapped, the poisoned step is skipped: torch without that step is the oracle."""
    kwargs = RICH[name]
    tparams = to_torch(make_params())
    reference = torch_optimizer(name, list(tparams.values()), **kwargs)

    def grads(i, tparams):
        grads = torch_grads(tparams)
        return _poison(grads) if i in POISONED else grads

    def finite_flag(i, params, state):
        assert bool(state.last_finite) == (i not in POISONED), f"step {i + 1}"

    tx = jopt.skip_nonfinite(getattr(jopt, name)(**kwargs))
    run = run_against_torch(
        tx, reference, tparams, 8, grads=grads, skip_torch=POISONED, check=finite_flag
    )
    assert int(run.state.skipped) == 2
    assert run.traces == 1


# --------------------------------------------------------------------------------------------
# Low precision
# --------------------------------------------------------------------------------------------

# Parameter dtypes per leaf: one tree mixes them, each buffer follows its own leaf.
MIXED = {"w": "bfloat16", "b": "float16", "s": "float32", "t": "bfloat16"}


@pytest.mark.parametrize("name", NAMES)
def test_low_precision_params(name: str) -> None:
    """bfloat16 / float16 parameters: state buffers and updates keep each parameter's dtype,
    and 10 steps stay within a few units in the last place of torch in the same dtype."""
    kwargs = RICH[name]
    leaf_dtypes = MIXED
    params = make_params()
    tparams = {
        k: torch.tensor(v).to(getattr(torch, leaf_dtypes[k])).requires_grad_()
        for k, v in params.items()
    }
    reference = torch_optimizer(name, list(tparams.values()), **kwargs)

    def grads(i, tparams):
        value = loss({k: t.float() for k, t in tparams.items()}, torch)
        tgrads = torch.autograd.grad(value, list(tparams.values()))
        for t, g in zip(tparams.values(), tgrads):
            t.grad = g
        return {k: jnp.asarray(g.float().numpy(), leaf_dtypes[k]) for k, g in zip(tparams, tgrads)}

    jparams = {k: jnp.asarray(v, leaf_dtypes[k]) for k, v in params.items()}
    run = run_against_torch(
        getattr(jopt, name)(**kwargs),
        reference,
        tparams,
        10,
        rtol=None,
        grads=grads,
        params=jparams,
        with_updates=True,
    )  # compared at the end, in units in the last place of each dtype
    jparams, state, updates = run.params, run.state, run.updates
    for k, t in tparams.items():
        assert jparams[k].dtype == leaf_dtypes[k] == str(t.dtype).removeprefix("torch.")
        assert updates[k].dtype == leaf_dtypes[k]
        eps = float(jnp.finfo(leaf_dtypes[k]).eps)
        ours, theirs = np.asarray(jparams[k], np.float32), t.detach().float().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=4 * eps, atol=4 * eps, err_msg=k)
    # Every buffer of the state has its parameter's dtype (step counts are int32).
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        where = jax.tree_util.keystr(path)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == leaf_dtypes[path[-1].key], where
        else:
            assert leaf.dtype == jnp.int32, where


# --------------------------------------------------------------------------------------------
# Complex parameters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_complex_params_follow_torch(name: str) -> None:
    """torch optimizes a complex parameter as its real view (``view_as_real``); so does jopt,
    and the state of a complex parameter is real with a trailing axis of 2."""
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))).astype(np.complex64)
    tparams = {"z": torch.tensor(z.copy(), requires_grad=True)}
    reference = torch_optimizer(name, list(tparams.values()), **RICH[name])

    def grads(i, tparams):
        grad = tparams["z"].detach().numpy() * (0.5 - 0.2j) + (0.1 + 0.3j)  # a function of p
        tparams["z"].grad = torch.tensor(grad)
        return {"z": jnp.asarray(grad)}

    run = run_against_torch(
        getattr(jopt, name)(**RICH[name]),
        reference,
        tparams,
        20,
        rtol=None,
        grads=grads,
        params={"z": jnp.asarray(z)},
    )  # compared at the end
    params, state = run.params, run.state
    assert params["z"].dtype == jnp.complex64 and run.traces == 1
    assert np.all(np.isfinite(params["z"]))
    np.testing.assert_allclose(params["z"], tparams["z"].detach().numpy(), rtol=1e-5, atol=1e-6)
    for leaf in jax.tree.leaves(state):
        assert leaf.ndim == 0 or leaf.shape == (3, 2, 2)
