"""jopt.optim against torch.optim: the same training loop, written both ways, lands on the same
parameters; state dicts move between the two; hyperparameter changes never recompile."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jopt
import jopt.optim

torch = pytest.importorskip("torch")

STEPS = 100

# name, constructor kwargs (shared by torch and jopt)
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.99))),
    ("RMSprop", dict(lr=0.002, momentum=0.5, centered=True, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
]
PATHS = ["grads", "closure", "backward"]


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(0, 0.5, (4, 8)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "W2": rng.normal(0, 0.5, (8, 3)).astype(np.float32),
        "b2": np.zeros(3, np.float32),
    }


def batch(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    return x, np.sin(x[:, :3] * 2.0).astype(np.float32)


def loss_fn(p, x, y):
    hidden = jnp.tanh(x @ p["W1"] + p["b1"])
    return jnp.mean((hidden @ p["W2"] + p["b2"] - y) ** 2)


def torch_loss(p, x, y):
    hidden = torch.tanh(x @ p["W1"] + p["b1"])
    return torch.mean((hidden @ p["W2"] + p["b2"] - y) ** 2)


def split_groups(tree, lrs):
    """Two param groups: the first layer at lrs[0], the second at lrs[1]."""
    first = {k: tree[k] for k in ("W1", "b1")}
    second = {k: tree[k] for k in ("W2", "b2")}
    return [{"params": first, "lr": lrs[0]}, {"params": second, "lr": lrs[1]}]


def run_torch(name, kwargs, path, groups=None, steps=STEPS, scheduler=None):
    params = {k: torch.tensor(v, requires_grad=True) for k, v in init_params().items()}
    x, y = (torch.tensor(a) for a in batch())
    spec = split_groups(params, groups) if groups else list(params.values())
    if groups:
        spec = [{**g, "params": list(g["params"].values())} for g in spec]
    opt = getattr(torch.optim, name)(spec, **kwargs)
    sched = scheduler(opt, torch.optim) if scheduler else None
    history = []
    for _ in range(steps):
        opt.zero_grad()
        if path == "backward":
            torch_loss(params, x[:8], y[:8]).backward()
            torch_loss(params, x[8:], y[8:]).backward()
        else:
            torch_loss(params, x, y).backward()
        opt.step()
        if sched:
            sched.step()
        history.append({k: v.detach().numpy().copy() for k, v in params.items()})
    return history


def run_jopt(name, kwargs, path, groups=None, steps=STEPS, scheduler=None):
    params = {k: jnp.asarray(v) for k, v in init_params().items()}
    x, y = (jnp.asarray(a) for a in batch())
    spec = split_groups(params, groups) if groups else params
    opt = getattr(jopt.optim, name)(spec, **kwargs)
    sched = scheduler(opt, jopt.optim) if scheduler else None
    grouped_loss = (lambda ps, x, y: loss_fn({**ps[0], **ps[1]}, x, y)) if groups else loss_fn
    grad_fn = jax.jit(jax.grad(grouped_loss))
    history = []
    for _ in range(steps):
        if path == "grads":
            opt.step(grad_fn(opt.params, x, y))
        elif path == "closure":
            opt.step(grouped_loss, x, y)
        else:
            opt.zero_grad()
            opt.backward(grouped_loss, x[:8], y[:8])
            opt.backward(grouped_loss, x[8:], y[8:])
            opt.step()
        if sched:
            sched.step()
        current = opt.params
        current = {**current[0], **current[1]} if groups else current
        history.append({k: np.asarray(v) for k, v in current.items()})
    return history, opt


def assert_histories_close(ours, theirs, rtol=1e-5, atol=1e-6):
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for key in b:
            np.testing.assert_allclose(
                a[key], b[key], rtol=rtol, atol=atol, err_msg=f"{key} at step {step}"
            )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=lambda c: str(c))
def test_training_loop_matches_torch(name, kwargs, path):
    ours, opt = run_jopt(name, kwargs, path)
    assert_histories_close(ours, run_torch(name, kwargs, path))
    # One compile for the whole loop; backward() compiles a first and an accumulating call.
    assert opt.compile_count == (3 if path == "backward" else 1)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01, weight_decay=0.01))],
)
def test_two_param_groups_match_torch(name, kwargs, path):
    lrs = (0.01, 0.002) if name == "Adam" else (0.2, 0.01)
    ours, opt = run_jopt(name, kwargs, path, groups=lrs)
    assert_histories_close(ours, run_torch(name, kwargs, path, groups=lrs))
    assert [g["lr"] for g in opt.param_groups] == list(lrs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("name", "kwargs"), [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01))]
)
def test_step_lr_scheduler_matches_torch_without_recompiling(name, kwargs, path):
    def step_lr(opt, optim_module):
        return optim_module.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)

    ours, opt = run_jopt(
        name, kwargs, path, groups=(kwargs["lr"], kwargs["lr"] / 4), scheduler=step_lr
    )
    theirs = run_torch(
        name, kwargs, path, groups=(kwargs["lr"], kwargs["lr"] / 4), scheduler=step_lr
    )
    assert_histories_close(ours, theirs)
    assert opt.param_groups[0]["lr"] == kwargs["lr"] * 0.5**10
    assert opt.compile_count == (3 if path == "backward" else 1)


def test_changing_lr_through_param_groups_does_not_recompile():
    x, y = (jnp.asarray(a) for a in batch())
    opt = jopt.optim.Adam({k: jnp.asarray(v) for k, v in init_params().items()}, lr=0.01)
    for lr in [0.01, 0.005, 0.001, 0.02, 1e-4]:
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["betas"] = (0.9 - lr, 0.999)
        opt.param_groups[0]["weight_decay"] = lr / 10
        opt.step(loss_fn, x, y)
    assert opt.compile_count == 1


def test_lr_change_takes_effect():
    params = {"w": jnp.ones(3)}
    opt = jopt.optim.SGD(params, lr=0.1)
    opt.step({"w": jnp.ones(3)})
    opt.param_groups[0]["lr"] = 1.0
    opt.step({"w": jnp.ones(3)})
    np.testing.assert_allclose(opt.params["w"], 1 - 0.1 - 1.0, rtol=1e-6)


def test_momentum_switched_on_later_follows_torch():
    # torch creates the momentum buffer at the first step with momentum != 0.
    ours, _ = run_jopt("SGD", dict(lr=0.1), "grads", steps=5)
    theirs = run_torch("SGD", dict(lr=0.1), "grads", steps=5)
    assert_histories_close(ours, theirs)

    def switch(opt, optim_module):
        class Switch:
            def __init__(self):
                self.calls = 0

            def step(self):
                self.calls += 1
                if self.calls == 3:
                    opt.param_groups[0]["momentum"] = 0.9

        return Switch()

    ours, opt = run_jopt("SGD", dict(lr=0.1), "closure", steps=10, scheduler=switch)
    theirs = run_torch("SGD", dict(lr=0.1), "closure", steps=10, scheduler=switch)
    assert_histories_close(ours, theirs)
    assert opt.compile_count == 2  # once without the buffer, once with it


# ------------------------------------------------------------------------------------------
# state_dict
# ------------------------------------------------------------------------------------------

STATE_CONFIGS = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
]


@pytest.mark.parametrize(("name", "kwargs"), STATE_CONFIGS, ids=lambda c: str(c))
def test_state_dict_round_trip_is_bitwise(name, kwargs):
    x, y = (jnp.asarray(a) for a in batch())
    params = {k: jnp.asarray(v) for k, v in init_params().items()}
    straight = getattr(jopt.optim, name)(params, **kwargs)
    for _ in range(20):
        straight.step(loss_fn, x, y)

    first = getattr(jopt.optim, name)(params, **kwargs)
    for _ in range(10):
        first.step(loss_fn, x, y)
    saved = first.state_dict()
    resumed = getattr(jopt.optim, name)(first.params, **kwargs)
    resumed.load_state_dict(saved)
    for _ in range(10):
        resumed.step(loss_fn, x, y)
    for key in params:
        np.testing.assert_array_equal(resumed.params[key], straight.params[key])
    assert resumed.state_dict()["state"].keys() == straight.state_dict()["state"].keys()


@pytest.mark.parametrize(("name", "kwargs"), STATE_CONFIGS, ids=lambda c: str(c))
def test_torch_state_dict_continues_in_jopt(name, kwargs):
    x, y = batch()
    t_params = {k: torch.tensor(v, requires_grad=True) for k, v in init_params().items()}
    t_opt = getattr(torch.optim, name)(list(t_params.values()), **kwargs)

    def torch_step():
        t_opt.zero_grad()
        torch_loss(t_params, torch.tensor(x), torch.tensor(y)).backward()
        t_opt.step()

    for _ in range(10):
        torch_step()
    sd = t_opt.state_dict()
    # jopt numbers leaves in tree order: W1, W2, b1, b2; torch numbered them as given.
    order = list(t_params)
    leaves = sorted(order)
    remap = {order.index(k): i for i, k in enumerate(leaves)}
    sd = {
        "state": {remap[i]: s for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }
    ours = getattr(jopt.optim, name)(
        {k: jnp.asarray(v.detach().numpy()) for k, v in t_params.items()}, **kwargs
    )
    ours.load_state_dict(sd)
    for _ in range(10):
        torch_step()
        ours.step(loss_fn, jnp.asarray(x), jnp.asarray(y))
        for key, value in t_params.items():
            np.testing.assert_allclose(
                ours.params[key], value.detach().numpy(), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize(("name", "kwargs"), STATE_CONFIGS, ids=lambda c: str(c))
def test_jopt_state_dict_loads_into_torch(name, kwargs):
    x, y = batch()
    params = {k: jnp.asarray(v) for k, v in init_params().items()}
    ours = getattr(jopt.optim, name)(params, **kwargs)
    for _ in range(5):
        ours.step(loss_fn, jnp.asarray(x), jnp.asarray(y))
    sd = ours.state_dict()
    leaves = sorted(init_params())  # jopt's leaf order
    t_params = {k: torch.tensor(np.asarray(ours.params[k]), requires_grad=True) for k in leaves}
    t_opt = getattr(torch.optim, name)(list(t_params.values()), **kwargs)
    t_opt.load_state_dict(
        {
            "state": {
                i: {k: torch.tensor(np.asarray(v)) for k, v in s.items()}
                for i, s in sd["state"].items()
            },
            "param_groups": sd["param_groups"],
        }
    )
    for _ in range(5):
        t_opt.zero_grad()
        torch_loss(t_params, torch.tensor(x), torch.tensor(y)).backward()
        t_opt.step()
        ours.step(loss_fn, jnp.asarray(x), jnp.asarray(y))
    for key in leaves:
        np.testing.assert_allclose(
            ours.params[key], t_params[key].detach().numpy(), rtol=1e-5, atol=1e-6
        )


def test_state_dict_names_follow_torch():
    params = {k: jnp.asarray(v) for k, v in init_params().items()}
    t_params = [torch.tensor(params[k]) for k in sorted(params)]
    for name, kwargs in STATE_CONFIGS:
        ours = getattr(jopt.optim, name)(params, **kwargs)
        theirs = getattr(torch.optim, name)(t_params, **kwargs)
        ours.step(jax.tree.map(jnp.ones_like, params))
        for p in t_params:
            p.grad = torch.ones_like(p)
        theirs.step()
        ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
        assert ours_sd["state"].keys() == theirs_sd["state"].keys()
        for index, entry in theirs_sd["state"].items():
            assert ours_sd["state"][index].keys() == entry.keys(), name
            for key, value in entry.items():
                # float32 scalars: torch computes 1 - beta in double, jopt on device.
                np.testing.assert_allclose(ours_sd["state"][index][key], value.numpy(), rtol=2e-5)
        assert ours_sd["param_groups"] == theirs_sd["param_groups"]


# ------------------------------------------------------------------------------------------
# flax nnx, plain pytrees, flat storage
# ------------------------------------------------------------------------------------------


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def test_nnx_module_is_optimized_in_place():
    x, y = (jnp.asarray(a) for a in batch())
    model = MLP(nnx.Rngs(0))
    opt = jopt.optim.Adam(model, lr=0.01)

    def mse(m, x, y):
        return jnp.mean((m(x) - y) ** 2)

    losses = [float(opt.step(mse, x, y)) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.7

    # The same run through the functional optimizer on the same parameters.
    graphdef, params = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)
    tx = jopt.adam(lr=0.01)
    state = tx.init(params)
    @jax.jit
    def functional_step(params, state):
        grads = jax.grad(lambda p: mse(nnx.merge(graphdef, p), x, y))(params)
        updates, state = tx.update(grads, state, params)
        return jopt.apply_updates(params, updates), state

    for _ in range(30):
        params, state = functional_step(params, state)
    np.testing.assert_allclose(model.hidden.kernel[...], params["hidden"]["kernel"][...], 1e-5)
    np.testing.assert_allclose(model(x), nnx.merge(graphdef, params)(x), rtol=1e-5)


def test_many_leaves_of_mixed_dtypes_are_stored_flat():
    params = {f"w{i}": jnp.asarray(np.full((i + 1,), float(i), np.float32)) for i in range(50)}
    params["half"] = jnp.asarray(np.ones(4), jnp.bfloat16)
    opt = jopt.optim.SGD(params, lr=0.5)
    # The step program takes one buffer per dtype, not 51 leaves.
    lowered = opt.lower_step(lambda p: sum(jnp.sum(x.astype(jnp.float32)) for x in p.values()))
    main = next(line for line in lowered.as_text().splitlines() if "@main(" in line)
    assert "tensor<1275xf32>" in main and "tensor<4xbf16>" in main
    assert "tensor<50xf32>" not in main
    opt.step({k: np.ones(v.shape, v.dtype) for k, v in params.items()})
    for key, value in params.items():
        assert opt.params[key].dtype == value.dtype
        expected = np.asarray(value, np.float32) - 0.5
        np.testing.assert_allclose(np.asarray(opt.params[key], np.float32), expected, rtol=1e-2)


def test_parameters_and_state_are_donated():
    opt = jopt.optim.Adam({"w": jnp.ones(1000), "b": jnp.ones(10)}, lr=0.1)
    text = opt.lower_step(lambda p: jnp.sum(p["w"]) + jnp.sum(p["b"])).as_text()
    # parameters, exp_avg, exp_avg_sq (and the step count) are updated in place
    assert text.count("tf.aliasing_output") >= 4


def test_user_arrays_survive_the_optimizer():
    w = jnp.ones(10)
    opt = jopt.optim.SGD({"w": w}, lr=0.1)
    opt.step({"w": jnp.ones(10)})
    np.testing.assert_array_equal(w, 1.0)


# ------------------------------------------------------------------------------------------
# Errors, in torch's words
# ------------------------------------------------------------------------------------------

BAD = [
    ("SGD", dict(lr=-1.0)),
    ("SGD", dict(lr=0.1, momentum=-0.5)),
    ("SGD", dict(lr=0.1, weight_decay=-1.0)),
    ("SGD", dict(lr=0.1, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.5, nesterov=True)),
    ("Adam", dict(eps=-1.0)),
    ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))),
    ("AdamW", dict(weight_decay=-0.1)),
    ("RMSprop", dict(alpha=-1.0)),
    ("RMSprop", dict(momentum=-1.0)),
    ("Adagrad", dict(lr_decay=-1.0)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)),
]


@pytest.mark.parametrize(("name", "kwargs"), BAD, ids=lambda c: str(c))
def test_bad_hyperparameters_raise_torchs_error(name, kwargs):
    with pytest.raises(ValueError) as theirs:
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError) as ours:
        getattr(jopt.optim, name)({"w": jnp.zeros(2)}, **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_structural_errors_use_torchs_words():
    with pytest.raises(ValueError) as theirs:
        torch.optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match=str(theirs.value)):
        jopt.optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match=str(theirs.value)):
        jopt.optim.SGD({}, lr=0.1)

    w = jnp.ones(3)
    t = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError) as theirs:
        torch.optim.SGD([{"params": [t]}, {"params": [t]}], lr=0.1)
    with pytest.raises(ValueError, match=str(theirs.value)):
        jopt.optim.SGD([{"params": {"a": w}}, {"params": {"b": w}}], lr=0.1)

    t_opt = torch.optim.SGD([{"params": [t]}, {"params": [torch.ones(1, requires_grad=True)]}])
    with pytest.raises(ValueError) as theirs:
        torch.optim.SGD([t]).load_state_dict(t_opt.state_dict())
    ours = jopt.optim.SGD([{"params": {"a": w}}, {"params": {"b": jnp.ones(1)}}])
    with pytest.raises(ValueError, match=str(theirs.value)):
        jopt.optim.SGD({"a": w}).load_state_dict(ours.state_dict())

    with pytest.raises(TypeError, match="param_group must be a dict"):
        jopt.optim.SGD({"a": w}).add_param_group([w])


def test_mismatched_gradients_name_the_path():
    opt = jopt.optim.Adam({"layer": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}})
    with pytest.raises(ValueError, match=r"\['layer'\]\['w'\].*\(3, 2\)"):
        opt.step({"layer": {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}})
    with pytest.raises(ValueError, match=r"missing \['layer'\]\['b'\]"):
        opt.step({"layer": {"w": jnp.ones((2, 3))}})


def test_integer_parameters_are_refused():
    with pytest.raises(ValueError, match="floating point"):
        jopt.optim.SGD({"count": jnp.arange(3)}, lr=0.1)


def test_add_param_group_fills_defaults():
    opt = jopt.optim.Adam({"a": jnp.ones(2)}, lr=0.01, betas=(0.8, 0.9))
    opt.add_param_group({"params": {"b": jnp.ones(3)}, "lr": 0.1})
    assert opt.param_groups[1]["betas"] == (0.8, 0.9)
    assert opt.param_groups[1]["lr"] == 0.1
    assert [set(tree) for tree in opt.params] == [{"a"}, {"b"}]
