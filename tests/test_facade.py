"""jopt.optim on real models: shared parameters with nnx modules, module state, torch's step
idioms, named parameters and state dicts that move by name, and a cost linear in leaves."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jopt
import jopt.optim

torch = pytest.importorskip("torch")


class Net(nnx.Module):
    """Linear -> BatchNorm -> Dropout -> Linear, with nested blocks in an nnx.List."""

    def __init__(self, rngs: nnx.Rngs, dropout: float = 0.5):
        self.fc = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = self.drop(self.bn(jax.nn.relu(self.fc(x))))
        for block in self.blocks:
            h = jnp.tanh(block(h))
        return self.head(h)


def cross_entropy(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def data(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, 4)), jnp.float32), jnp.asarray(rng.integers(0, 3, n))


# ------------------------------------------------------------------------------------------
# Module state and shared parameters
# ------------------------------------------------------------------------------------------


def test_module_state_is_carried_and_matches_the_nnx_reference():
    """BatchNorm statistics and Dropout's RNG stream go through step(loss_fn) and come back
    into the module; the run equals the same model trained with nnx.jit + nnx.value_and_grad
    and the functional optimizer."""
    x, y = data()
    model = Net(nnx.Rngs(0, dropout=1))
    opt = jopt.optim.Adam(model, lr=0.01)
    losses = [float(opt.step(cross_entropy, x, y)) for _ in range(5)]

    ref = Net(nnx.Rngs(0, dropout=1))
    tx = jopt.adam(lr=0.01)
    params = nnx.state(ref, nnx.Param)
    state = tx.init(params)

    @nnx.jit
    def ref_step(ref, state):
        loss, grads = nnx.value_and_grad(cross_entropy)(ref, x, y)
        params = nnx.state(ref, nnx.Param)
        updates, state = tx.update(grads, state, params)
        nnx.update(ref, jopt.apply_updates(params, updates))
        return loss, state

    ref_losses = []
    for _ in range(5):
        loss, state = ref_step(ref, state)
        ref_losses.append(float(loss))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    assert int(model.drop.rngs.count[...]) == 5
    np.testing.assert_allclose(model.bn.mean[...], ref.bn.mean[...], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.head.kernel[...], ref.head.kernel[...], rtol=1e-5, atol=1e-7)
    assert opt.compile_count == 1


def test_train_and_eval_take_effect_at_the_next_step():
    x, y = data()
    model = Net(nnx.Rngs(0, dropout=1))
    opt = jopt.optim.SGD(model, lr=0.0)  # lr 0: the parameters stay, the mode shows
    train = [float(opt.step(cross_entropy, x, y)) for _ in range(2)]
    assert train[0] != train[1]  # dropout draws a new mask at each step
    model.eval()
    mean = np.asarray(model.bn.mean[...])
    evals = [float(opt.step(cross_entropy, x, y)) for _ in range(2)]
    assert evals[0] == evals[1]  # no dropout, running statistics
    np.testing.assert_array_equal(model.bn.mean[...], mean)  # not updated in eval
    np.testing.assert_allclose(evals[0], cross_entropy(model, x, y), rtol=1e-6)
    model.train()
    opt.step(cross_entropy, x, y)
    assert opt.compile_count == 2  # train() went back to the first program


def test_weights_written_into_the_module_are_what_the_next_step_starts_from():
    """torch's resume order: build the model, build the optimizer, then load the weights."""
    x, y = data()
    model = Net(nnx.Rngs(0), dropout=0.0)
    opt = jopt.optim.SGD(model, lr=0.1)
    opt.step(cross_entropy, x, y)
    loaded = jax.tree.map(lambda a: a * 0 + 0.01, nnx.state(Net(nnx.Rngs(3)), nnx.Param))
    nnx.update(model, loaded)
    expected_grads = nnx.grad(cross_entropy)(model, x, y)
    opt.step(cross_entropy, x, y)
    np.testing.assert_allclose(
        model.head.kernel[...],
        0.01 - 0.1 * expected_grads["head"]["kernel"][...],
        rtol=1e-5,
        atol=1e-7,
    )
    model.fc.bias[...] = jnp.full(8, 2.0)  # a manual edit
    np.testing.assert_array_equal(opt.params["fc"]["bias"][...], 2.0)


def test_param_groups_of_named_parameters_update_the_module():
    """nanoGPT's decay / no-decay split: groups of a module's Variables, the module passed to
    the loss function; the module is what the step changes."""
    x, y = data()
    model = Net(nnx.Rngs(0), dropout=0.0)
    named = jopt.optim.named_parameters(model)
    assert [n for n, _ in named] == [
        "fc.kernel", "fc.bias", "bn.scale", "bn.bias", "blocks.0.kernel", "blocks.0.bias",
        "blocks.1.kernel", "blocks.1.bias", "head.kernel", "head.bias",
    ]  # fmt: skip
    decay = [(n, p) for n, p in named if p[...].ndim >= 2]
    no_decay = [(n, p) for n, p in named if p[...].ndim < 2]
    opt = jopt.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.01,
    )
    before = np.asarray(model.head.kernel[...])
    opt.step(cross_entropy, model, x, y)
    assert not np.allclose(model.head.kernel[...], before)
    groups = opt.state_dict()["param_groups"]
    assert groups[0]["param_names"] == [n for n, _ in decay]
    assert groups[1]["param_names"] == [n for n, _ in no_decay]


# ------------------------------------------------------------------------------------------
# torch's step idioms
# ------------------------------------------------------------------------------------------


def test_zero_argument_closure_and_writable_gradients():
    x, y = data()
    model = Net(nnx.Rngs(0), dropout=0.0)
    opt = jopt.optim.SGD(model, lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        return opt.backward(cross_entropy, x, y)

    expected = cross_entropy(model, x, y)
    before = np.asarray(model.head.bias[...])
    loss = opt.step(closure)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert calls == [1]
    grads = opt.grads  # torch keeps .grad after step()
    np.testing.assert_allclose(
        model.head.bias[...], before - 0.1 * grads["head"]["bias"][...], rtol=1e-6
    )
    opt.grads = jax.tree.map(jnp.zeros_like, grads)
    kept = np.asarray(model.head.bias[...])
    opt.step()
    np.testing.assert_array_equal(model.head.bias[...], kept)
    with pytest.raises(ValueError, match="shape"):
        opt.grads = jax.tree.map(lambda g: jnp.zeros((2, 2)), grads)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    rng = np.random.default_rng(0)
    values = [rng.normal(size=s).astype(np.float32) * 3 for s in [(3, 4), (4,), (2, 2, 2)]]
    opt = jopt.optim.SGD([jnp.asarray(v) for v in values], lr=1.0)
    opt.grads = [jnp.asarray(v) * 2 for v in values]
    tparams = [torch.tensor(v, requires_grad=True) for v in values]
    for t, v in zip(tparams, values):
        t.grad = torch.tensor(v * 2)
    theirs = torch.nn.utils.clip_grad_norm_(tparams, 1.5, norm_type=norm_type)
    ours = jopt.optim.clip_grad_norm_(opt, 1.5, norm_type=norm_type)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    for g, t in zip(opt.grads, tparams):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)
    torch.nn.utils.clip_grad_value_(tparams, 0.1)
    jopt.optim.clip_grad_value_(opt, 0.1)
    for g, t in zip(opt.grads, tparams):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)


def test_a_new_function_object_each_step_reuses_the_program_or_warns():
    x = jnp.ones(3)
    opt = jopt.optim.SGD({"w": jnp.ones(3)}, lr=0.1)
    for _ in range(4):  # the same code capturing the same objects: the same function
        opt.step(lambda p: jnp.sum(p["w"] * x))
    assert opt.compile_count == 1
    with pytest.warns(jopt.optim.RecompileWarning, match="outside the loop"):
        for i in range(jopt.optim.programs.RECOMPILE_LIMIT + 1):
            batch = x + i  # a new array captured by a new closure: a new program each time
            opt.step(lambda p, batch=batch: jnp.sum(p["w"] * batch))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not again
        opt.step(lambda p, batch=x * 3: jnp.sum(p["w"] * batch))


# ------------------------------------------------------------------------------------------
# State dicts by name
# ------------------------------------------------------------------------------------------


def _stepped_adam(order):
    params = [("a", jnp.ones((2, 3))), ("b", jnp.full(3, 2.0)), ("c", jnp.zeros(4))]
    params = [params[i] for i in order]
    opt = jopt.optim.Adam(params, lr=0.1)
    opt.step([jnp.full(p.shape, float(i + 1)) for i, (_, p) in enumerate(params)])
    return opt


def test_state_dict_loads_by_name_and_refuses_a_shape_that_does_not_fit():
    saved = _stepped_adam([0, 1, 2]).state_dict()
    assert saved["param_groups"][0]["param_names"] == ["a", "b", "c"]
    other = _stepped_adam([2, 0, 1])  # the same parameters, another order
    other.load_state_dict(saved)
    by_name = dict(zip(other.param_groups[0]["param_names"], other.state.values()))
    np.testing.assert_array_equal(by_name["b"]["exp_avg"], saved["state"][1]["exp_avg"])

    bad = {**saved, "state": {**saved["state"], 0: {**saved["state"][0]}}}
    bad["state"][0]["exp_avg"] = np.zeros((3, 2), np.float32)
    target = _stepped_adam([0, 1, 2])
    before = jax.tree.map(np.asarray, target.state_dict())
    with pytest.raises(ValueError, match=r"'exp_avg' of shape \(3, 2\) for parameter a.*\(2, 3\)"):
        target.load_state_dict(bad)
    with pytest.raises(ValueError, match="no parameter named 'c'"):
        renamed = {**saved["param_groups"][0], "param_names": ["a", "b", "d"]}
        target.load_state_dict({**saved, "param_groups": [renamed]})
    jax.tree.map(np.testing.assert_array_equal, target.state_dict(), before)


def test_torch_named_optimizer_ports_in_one_call():
    """from_torch: class, groups, hyperparameters and state of a live torch optimizer, over
    parameters that correspond by name; both then take the same steps."""
    tmodel = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    topt = torch.optim.AdamW(tmodel.named_parameters(), lr=0.01, betas=(0.8, 0.95))
    x = torch.tensor(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))

    def tstep():
        topt.zero_grad()
        tmodel(x).pow(2).mean().backward()
        topt.step()

    for _ in range(3):
        tstep()
    named = [(n, jnp.asarray(p.detach().numpy())) for n, p in tmodel.named_parameters()]
    ours = jopt.optim.from_torch(topt, named[::-1])  # names, not order, decide

    names = ours.param_groups[0]["param_names"]  # torch's order

    def loss(params, x):
        p = dict(zip(names, params))
        h = jnp.tanh(x @ p["0.weight"].T + p["0.bias"])
        return jnp.mean((h @ p["2.weight"].T + p["2.bias"]) ** 2)

    assert ours.param_groups[0]["betas"] == (0.8, 0.95)
    for _ in range(3):
        tstep()
        ours.step(loss, jnp.asarray(x.numpy()))
    got = dict(zip(names, ours.params))
    for name, p in tmodel.named_parameters():
        np.testing.assert_allclose(got[name], p.detach().numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Cost linear in the number of leaves
# ------------------------------------------------------------------------------------------


def _leaves(count, total=30_000):
    size = total // count
    return [jnp.full(size, 0.01 * i) for i in range(count)]


def _program_text(count):
    opt = jopt.optim.Adam(_leaves(count), lr=1e-3)
    return opt.lower_step(lambda ps: sum(jnp.sum(jnp.sin(p) ** 2) for p in ps)).as_text()


def test_the_closure_step_holds_no_pad_and_grows_linearly():
    small, large = _program_text(40), _program_text(400)
    assert "stablehlo.pad" not in large
    # The gradients are concatenated (jnp.concatenate joins up to 16 operands per op), not
    # padded to the buffer and added per leaf.
    assert len(re.findall(r"stablehlo.concatenate", large)) <= 400 // 16 + 8
    ratio = len(large.splitlines()) / len(small.splitlines())
    assert 8 < ratio < 12  # 10x the leaves, ~10x the program


def test_flat_params_differentiate_linearly_and_match_the_tree():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": [jnp.ones(4), jnp.full((2, 2), 3.0)]}
    flat, unflatten = jopt.flat_params(tree)
    assert set(flat) == {"float32"} and flat["float32"].shape == (14,)

    def loss(t):
        return jnp.sum(jnp.sin(t["a"])) + jnp.sum(t["b"][0] ** 2) + jnp.sum(t["b"][1] ** 3)

    via_flat = jax.grad(lambda f: loss(unflatten(f)))(flat)
    np.testing.assert_allclose(unflatten(via_flat)["a"], jax.grad(loss)(tree)["a"], rtol=1e-6)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda f: loss(unflatten(f))))(flat))
    assert " pad" not in jaxpr and "concatenate" in jaxpr


def test_a_loaded_group_missing_a_hyperparameter_or_out_of_range_is_refused_unchanged():
    """torch would fail later, at the step (a bare KeyError); jopt refuses the load, naming
    the entry, with torch's own message for a bad value, and keeps what it had."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    opt = jopt.optim.Adam(params, lr=0.1)
    opt.step(jax.tree.map(jnp.ones_like, params))
    saved = opt.state_dict()
    without = {**saved, "param_groups": [{**saved["param_groups"][0]}]}
    del without["param_groups"][0]["betas"]
    with pytest.raises(ValueError, match="parameter group 0 has no 'betas', which Adam reads"):
        opt.load_state_dict(without)
    negative = {**saved, "param_groups": [{**saved["param_groups"][0], "lr": -0.1}]}
    with pytest.raises(ValueError) as theirs:
        torch.optim.Adam([torch.zeros(1)], lr=-0.1)
    with pytest.raises(ValueError, match=f"^{re.escape(str(theirs.value))}$"):
        opt.load_state_dict(negative)
    after = opt.state_dict()
    assert after["param_groups"] == saved["param_groups"]
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(after["state"][index][key], value)
