"""The facade classes of Adadelta, Adamax, NAdam, RAdam, Rprop, ASGD, SparseAdam, Adafactor
and Muon against
torch.optim: the same training loop written both ways lands on the same parameters, and state
dicts round-trip bitwise and move between the two. Every jopt.optim class keeps torch's state
entries under torch's names.

The loops are short (the functional optimizers are checked over 100 steps in
``test_optimizers_more.py``); what this file checks is the mapping from torch's constructor,
groups and state dicts onto them.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_optim import assert_histories_close, batch, init_params, loss_fn, torch_loss

import jopt
import jopt.optim

torch = pytest.importorskip("torch")

STEPS = 30

# name, constructor kwargs (shared by torch and jopt)
CONFIGS = [
    ("Adadelta", dict(weight_decay=0.01)),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=0.01, weight_decay=0.01)),
    ("Rprop", dict(lr=0.01, etas=(0.4, 1.3))),
    ("ASGD", dict(lr=0.05, lambd=1e-3, t0=10, weight_decay=0.01)),
    ("SparseAdam", dict(lr=0.01)),
    ("Adafactor", dict(lr=0.01, weight_decay=0.01)),
]
LEAVES = sorted(init_params())  # jopt numbers the leaves of a dict in sorted order


def data() -> tuple[np.ndarray, np.ndarray]:
    """The batch of test_optim with its last feature zeroed: the gradient of ``W1``'s last row
    is exactly zero, so SparseAdam's sparse gradients leave entries out."""
    x, y = batch()
    x[:, -1] = 0.0
    return x, y


X, Y = data()


class TorchRun:
    """torch's loop over the parameters of ``init_params`` (or given), in jopt's leaf order."""

    def __init__(self, name: str, kwargs: dict, params: dict | None = None) -> None:
        start = init_params() if params is None else params
        self.params = {k: torch.tensor(np.asarray(start[k]), requires_grad=True) for k in LEAVES}
        self.opt = getattr(torch.optim, name)(list(self.params.values()), **kwargs)
        self.sparse = name == "SparseAdam"

    def step(self) -> None:
        self.opt.zero_grad()
        torch_loss(self.params, torch.tensor(X), torch.tensor(Y)).backward()
        if self.sparse:
            for p in self.params.values():
                p.grad = p.grad.to_sparse()
        self.opt.step()

    def values(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.params.items()}


def jopt_opt(name: str, kwargs: dict, params: dict | None = None) -> jopt.optim.Optimizer:
    start = init_params() if params is None else params
    return getattr(jopt.optim, name)({k: jnp.asarray(v) for k, v in start.items()}, **kwargs)


def jopt_step(opt: jopt.optim.Optimizer) -> None:
    opt.step(loss_fn, jnp.asarray(X), jnp.asarray(Y))


def values(opt: jopt.optim.Optimizer) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in opt.params.items()}


def to_torch_state(sd: dict) -> dict:
    return {
        "state": {
            i: {k: v if isinstance(v, int) else torch.tensor(np.asarray(v)) for k, v in s.items()}
            for i, s in sd["state"].items()
        },
        "param_groups": sd["param_groups"],
    }


def assert_same_state(ours: dict, expected: dict) -> None:
    assert ours.keys() == expected.keys()
    for index, entry in expected.items():
        assert ours[index].keys() == entry.keys()
        for key, value in entry.items():
            np.testing.assert_array_equal(ours[index][key], value, err_msg=f"{index} {key}")


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=lambda c: str(c))
def test_facade_follows_torch_and_state_dicts_move(name, kwargs):
    """30 steps of ``opt.step(loss_fn, x, y)`` against torch's loop. Halfway, three more
    optimizers start from the state dicts: a jopt one from jopt's (it must then agree with the
    first bit for bit), a jopt one from torch's and a torch one from jopt's (both must stay on
    the trajectory). One compilation per jopt optimizer."""
    ours, theirs = jopt_opt(name, kwargs), TorchRun(name, kwargs)
    resumed = from_torch = to_torch = None
    ours_history, theirs_history = [], []
    for step in range(STEPS):
        if step == STEPS // 2:
            resumed = getattr(jopt.optim, name)(ours.params, **kwargs)
            resumed.load_state_dict(ours.state_dict())
            from_torch = jopt_opt(name, kwargs, theirs.values())
            from_torch.load_state_dict(theirs.opt.state_dict())
            to_torch = TorchRun(name, kwargs, values(ours))
            to_torch.opt.load_state_dict(to_torch_state(ours.state_dict()))
        for opt in (ours, resumed, from_torch):
            if opt is not None:
                jopt_step(opt)
        for run in (theirs, to_torch):
            if run is not None:
                run.step()
        ours_history.append(values(ours))
        theirs_history.append(theirs.values())
    assert_histories_close(ours_history, theirs_history)
    assert ours.compile_count == resumed.compile_count == from_torch.compile_count == 1
    assert ours.state_dict()["param_groups"] == theirs.opt.state_dict()["param_groups"]
    # jopt -> jopt: bitwise
    for key in LEAVES:
        np.testing.assert_array_equal(resumed.params[key], ours.params[key], err_msg=key)
    assert_same_state(resumed.state_dict()["state"], ours.state_dict()["state"])
    # torch -> jopt and jopt -> torch: on torch's trajectory
    assert_histories_close([values(from_torch)], [theirs.values()])
    assert_histories_close([values(ours)], [to_torch.values()])


# ------------------------------------------------------------------------------------------
# Every class keeps torch's state entries
# ------------------------------------------------------------------------------------------

CLASSES = sorted(
    name
    for name in jopt.optim.__all__
    if inspect.isclass(getattr(jopt.optim, name))
    and issubclass(getattr(jopt.optim, name), jopt.optim.Optimizer)
    and getattr(jopt.optim, name) is not jopt.optim.Optimizer
)
# Arguments under which torch keeps every kind of state entry the class has.
STATE_KWARGS = {
    "SGD": dict(momentum=0.9),
    "Adam": dict(amsgrad=True),
    "RMSprop": dict(momentum=0.5, centered=True),
    "LBFGS": dict(max_iter=3),  # curvature pairs stored, far from the minimum
}


@pytest.mark.parametrize("name", CLASSES)
def test_state_entries_are_torchs(name):
    kwargs = STATE_KWARGS.get(name, {})
    params = {k: jnp.asarray(v) for k, v in init_params().items()}
    if name == "Muon":  # matrices only, as torch's Muon
        params = {k: v for k, v in params.items() if v.ndim == 2}
    t_params = [torch.tensor(np.asarray(params[k])) for k in sorted(params)]
    ours = getattr(jopt.optim, name)(params, **kwargs)
    theirs = getattr(torch.optim, name)(t_params, **kwargs)
    before = ours.state_dict()["state"]
    assert {i: e.keys() for i, e in before.items()} == {
        i: e.keys() for i, e in theirs.state_dict()["state"].items()
    }
    if name == "LBFGS":  # it evaluates the loss itself: a smooth convex one
        ours.step(lambda p: sum(jnp.sum(x**2 + jnp.exp(x)) for x in jax.tree.leaves(p)))

        def closure():
            theirs.zero_grad()
            loss = sum((p**2 + p.exp()).sum() for p in t_params)
            loss.backward()
            return loss

        for p in t_params:
            p.requires_grad_(True)
        theirs.step(closure)
    else:
        ours.step(jax.tree.map(jnp.ones_like, params))
        for p in t_params:
            p.grad = torch.ones_like(p).to_sparse() if name == "SparseAdam" else torch.ones_like(p)
        theirs.step()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd["state"].keys() == theirs_sd["state"].keys()
    for index, entry in theirs_sd["state"].items():
        assert ours_sd["state"][index].keys() == entry.keys(), f"{name}, parameter {index}"
        for key, value in entry.items():
            mine = ours_sd["state"][index][key]
            if isinstance(value, list):  # LBFGS's history
                assert len(mine) == len(value), key
                continue
            if name == "LBFGS" and key in ("t", "H_diag", "prev_loss"):  # torch: tensor or number
                np.testing.assert_allclose(np.asarray(mine), np.asarray(value), rtol=2e-5)
                continue
            if not torch.is_tensor(value):  # SparseAdam's step, LBFGS's counts: Python ints
                assert type(mine) is type(value) and mine == value, key
                continue
            # float32 scalars: torch computes 1 - beta in double, jopt on device; L-BFGS's
            # two-loop sums reassociate (its trajectories are held to torch's in float64 in
            # test_lbfgs.py).
            tol = dict(rtol=1e-4, atol=1e-6) if name == "LBFGS" else dict(rtol=2e-5)
            np.testing.assert_allclose(mine, value.numpy(), err_msg=key, **tol)
            assert np.shape(mine) == tuple(value.shape), key
    assert ours_sd["param_groups"] == theirs_sd["param_groups"]


def test_loaded_scalars_must_agree_across_a_group():
    theirs = TorchRun("NAdam", {})
    theirs.step()
    sd = theirs.opt.state_dict()
    sd["state"][1]["mu_product"] = sd["state"][1]["mu_product"] * 0.5
    ours = jopt_opt("NAdam", {})
    before = ours.state_dict()
    with pytest.raises(ValueError, match="different 'mu_product' values"):
        ours.load_state_dict(sd)
    assert ours.state_dict()["state"] == before["state"]


# torch orthogonalises in bfloat16, and CPU bfloat16 matmuls round differently across kernels
# (AVX512-BF16 or AMX on one CPU, emulation on another): within bfloat16's resolution, not 1e-5.
MUON_TOL = {"rtol": 2e-2, "atol": 1e-3}


def test_muon_follows_torch_and_state_dicts_move():
    """Muon on the matrices of the MLP (the biases held at zero): 20 steps against torch, then
    torch's state dict continues in jopt and jopt's in torch."""
    start = {k: v for k, v in init_params().items() if v.ndim == 2}
    zeros = {"b1": np.zeros(8, np.float32), "b2": np.zeros(3, np.float32)}

    def loss(p, x, y):
        return loss_fn({**p, **{k: jnp.asarray(v) for k, v in zeros.items()}}, x, y)

    t_params = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    t_opt = torch.optim.Muon([t_params[k] for k in sorted(start)], lr=0.02)
    ours = jopt.optim.Muon({k: jnp.asarray(v) for k, v in start.items()}, lr=0.02)

    def torch_step(params, opt):
        opt.zero_grad()
        full = {**params, **{k: torch.tensor(v) for k, v in zeros.items()}}
        torch_loss(full, torch.tensor(X), torch.tensor(Y)).backward()
        opt.step()

    for _ in range(20):
        torch_step(t_params, t_opt)
        ours.step(loss, jnp.asarray(X), jnp.asarray(Y))
        for k, v in t_params.items():
            np.testing.assert_allclose(ours.params[k], v.detach().numpy(), **MUON_TOL)
    assert ours.compile_count == 1
    moved = jopt.optim.Muon({k: jnp.asarray(v.detach().numpy()) for k, v in t_params.items()})
    moved.load_state_dict(t_opt.state_dict())
    back_params = {k: torch.tensor(np.asarray(ours.params[k]), requires_grad=True) for k in start}
    back = torch.optim.Muon([back_params[k] for k in sorted(start)])
    back.load_state_dict(to_torch_state(ours.state_dict()))
    for _ in range(5):
        torch_step(t_params, t_opt)
        torch_step(back_params, back)
        moved.step(loss, jnp.asarray(X), jnp.asarray(Y))
        ours.step(loss, jnp.asarray(X), jnp.asarray(Y))
    for k, v in t_params.items():
        np.testing.assert_allclose(moved.params[k], v.detach().numpy(), **MUON_TOL)
        theirs = back_params[k].detach().numpy()
        np.testing.assert_allclose(ours.params[k], theirs, **MUON_TOL)


# ------------------------------------------------------------------------------------------
# Complex parameters: torch's state is complex, jopt's pairs of reals
# ------------------------------------------------------------------------------------------

COMPLEX_CONFIGS = [
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("Adam", dict(lr=0.05, amsgrad=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adadelta", dict()),
    ("Adamax", dict(lr=0.05)),
    ("NAdam", dict(lr=0.05)),
    ("RAdam", dict(lr=0.05)),
    ("ASGD", dict(lr=0.05)),
    ("Rprop", dict(lr=0.05)),
]


def complex_grads(z, w):
    """A fixed gradient field of a complex and a real parameter (numpy, either side)."""
    return (np.sin(z.real) + 1j * np.cos(3 * z.imag)).astype(np.complex64), np.tanh(w) + 0.1


@pytest.mark.parametrize(("name", "kwargs"), COMPLEX_CONFIGS, ids=lambda c: str(c))
def test_complex_state_dicts_are_torchs_and_load_both_ways(name, kwargs):
    """torch keeps a complex parameter's state complex (stepping it through ``view_as_real``);
    jopt's state_dict writes it so, and each side continues from the other's."""
    rng = np.random.default_rng(0)
    z0 = (rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))).astype(np.complex64)
    w0 = rng.normal(size=4).astype(np.float32)

    def torch_run(z, w, state=None, steps=3):
        params = [torch.nn.Parameter(torch.tensor(z)), torch.nn.Parameter(torch.tensor(w))]
        opt = getattr(torch.optim, name)(params, **kwargs)
        if state is not None:
            opt.load_state_dict(state)
        for _ in range(steps):
            for p, g in zip(params, complex_grads(*(q.detach().numpy() for q in params))):
                p.grad = torch.tensor(g)
            opt.step()
        return opt, [p.detach().numpy() for p in params]

    def jopt_run(z, w, state=None, steps=3):
        opt = getattr(jopt.optim, name)([jnp.asarray(z), jnp.asarray(w)], **kwargs)
        if state is not None:
            opt.load_state_dict(state)
        for _ in range(steps):
            opt.step(list(complex_grads(*map(np.asarray, opt.params))))
        return opt, [np.asarray(p) for p in opt.params]

    theirs, t_values = torch_run(z0, w0)
    ours, values = jopt_run(z0, w0)
    for a, b in zip(values, t_values):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    t_state, state = theirs.state_dict()["state"], ours.state_dict()["state"]
    assert state.keys() == t_state.keys()
    for index, entry in t_state.items():
        assert state[index].keys() == entry.keys()
        for key, value in entry.items():
            ours_value = np.asarray(state[index][key])
            assert ours_value.dtype == value.numpy().dtype, (index, key)
            np.testing.assert_allclose(ours_value, value.numpy(), rtol=1e-5, atol=1e-6)
    # each continues from the other's state dict, on the trajectory of 6 steps
    _, t_six = torch_run(z0, w0, steps=6)
    _, from_torch = jopt_run(*t_values, state=theirs.state_dict())
    _, to_torch = torch_run(*values, state=to_torch_state(ours.state_dict()))
    for a, b, c in zip(from_torch, to_torch, t_six):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-6)
