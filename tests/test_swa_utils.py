"""``jopt.optim.swa_utils`` and the functional averages (``jopt.swa``, ``jopt.ema``) against
``torch.optim.swa_utils``.

The port is torch's own SWA recipe (its documentation's loop): an MLP with BatchNorm on Iris,
SGD with a cosine schedule, then ``AveragedModel.update_parameters`` and ``SWALR`` from
``swa_start`` on, and ``update_bn`` over the loader at the end; both scripts run side by side
and every lr, averaged weight, BatchNorm statistic and prediction is compared. The averaging
rules are also checked alone, on identical parameter sequences, where they must agree to
float32 rounding.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jopt
import jopt.optim
from jopt.optim import swa_utils
from jopt.train import load_iris

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.optim import swa_utils as torch_swa  # noqa: E402


class TorchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class Net(nnx.Module):
    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(4, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.fc2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.bn(self.fc1(x))))


def _torch_named(module: nn.Module) -> dict[str, np.ndarray]:
    """torch's parameters and float buffers in nnx's names and layouts."""
    sd = module.state_dict()
    out = {}
    for layer in ("fc1", "fc2"):
        out[f"{layer}.kernel"] = sd[f"{layer}.weight"].numpy().T
        out[f"{layer}.bias"] = sd[f"{layer}.bias"].numpy()
    out["bn.scale"], out["bn.bias"] = sd["bn.weight"].numpy(), sd["bn.bias"].numpy()
    out["bn.mean"], out["bn.var"] = sd["bn.running_mean"].numpy(), sd["bn.running_var"].numpy()
    return out


_STATS = ("mean", "var")


def _named(module: nnx.Module) -> dict[str, np.ndarray]:
    return {
        f"{layer}.{name}": np.asarray(getattr(getattr(module, layer), name)[...])
        for layer, names in (("fc1", ("kernel", "bias")), ("fc2", ("kernel", "bias")))
        for name in names
    } | {f"bn.{n}": np.asarray(getattr(module.bn, n)[...]) for n in ("scale", "bias", *_STATS)}


def _write(module: nnx.Module, values: dict[str, np.ndarray]) -> None:
    for key, value in values.items():
        layer, name = key.split(".")
        getattr(getattr(module, layer), name)[...] = jnp.asarray(value)


def _write_torch(module: nn.Module, values: dict[str, np.ndarray]) -> None:
    names = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    with torch.no_grad():
        for key, value in values.items():
            layer, name = key.split(".")
            tensor = getattr(getattr(module, layer), names.get(name, name))
            tensor.copy_(torch.tensor(value.T if name == "kernel" else value))


def _pair() -> tuple[Net, TorchNet]:
    torch.manual_seed(0)
    theirs = TorchNet()
    ours = Net()
    _write(ours, _torch_named(theirs))
    return ours, theirs


def _assert_close(ours: dict, theirs: dict, keys=None, rtol=1e-6, atol=5e-7) -> None:
    for key in keys or theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=rtol, atol=atol, err_msg=key)


PARAMS = ("fc1.kernel", "fc1.bias", "fc2.kernel", "fc2.bias", "bn.scale", "bn.bias")
BUFFERS = ("bn.mean", "bn.var")

# ------------------------------------------------------------------------------------------
# The averaging rules on identical sequences of weights
# ------------------------------------------------------------------------------------------

RULES = {
    "swa": ({}, {}),
    "ema_multi": (
        {"multi_avg_fn": swa_utils.get_ema_multi_avg_fn(0.9)},
        {"multi_avg_fn": torch_swa.get_ema_multi_avg_fn(0.9)},
    ),
    "ema": (
        {"avg_fn": swa_utils.get_ema_avg_fn(0.8)},
        {"avg_fn": torch_swa.get_ema_avg_fn(0.8)},
    ),
    "swa_multi": (
        {"multi_avg_fn": swa_utils.get_swa_multi_avg_fn()},
        {"multi_avg_fn": torch_swa.get_swa_multi_avg_fn()},
    ),
}


@pytest.mark.parametrize(
    ("rule", "use_buffers"),
    # torch's get_swa_multi_avg_fn fails on BatchNorm's integer num_batches_tracked buffer
    [(r, b) for r in sorted(RULES) for b in (False, True) if (r, b) != ("swa_multi", True)],
)
def test_averaged_model_follows_torchs_rule(rule: str, use_buffers: bool) -> None:
    ours_kwargs, torch_kwargs = RULES[rule]
    model, torch_model = _pair()
    averaged = swa_utils.AveragedModel(model, use_buffers=use_buffers, **ours_kwargs)
    torch_averaged = torch_swa.AveragedModel(torch_model, use_buffers=use_buffers, **torch_kwargs)
    rng = np.random.default_rng(1)
    for _ in range(6):
        values = {
            k: (v + rng.normal(size=v.shape)).astype(np.float32)
            for k, v in _named(model).items()
        }
        values["bn.var"] = np.abs(values["bn.var"]) + 0.1
        _write(model, values)
        _write_torch(torch_model, values)
        averaged.update_parameters(model)
        torch_averaged.update_parameters(torch_model)
        _assert_close(_named(averaged.module), _torch_named(torch_averaged.module))
    assert int(averaged.n_averaged[...]) == int(torch_averaged.n_averaged) == 6
    # the averaged copy is independent of the model
    assert not np.allclose(_named(averaged.module)["fc1.kernel"], _named(model)["fc1.kernel"])


@pytest.mark.parametrize("rule", ["swa", "ema_multi"])
def test_functional_average_inside_jit_equals_torchs_averaged_model(rule: str) -> None:
    """``jopt.swa()`` / ``jopt.ema(decay)`` as state inside a jitted scan over parameter
    trees equal torch's ``AveragedModel`` over the same sequence."""
    averaging = jopt.swa() if rule == "swa" else jopt.ema(0.9)
    _, torch_kwargs = RULES[rule]
    rng = np.random.default_rng(2)
    sequence = {"w": rng.normal(size=(8, 3, 4)), "b": rng.normal(size=(8, 4))}
    sequence = {k: v.astype(np.float32) for k, v in sequence.items()}

    @jax.jit
    def run(sequence):
        first = jax.tree.map(lambda s: s[0], sequence)

        def body(state, params):
            return averaging.update(params, state), None

        state, _ = jax.lax.scan(body, averaging.init(first), sequence)
        return state

    state = run(sequence)
    params = {k: torch.nn.Parameter(torch.zeros(v.shape[1:])) for k, v in sequence.items()}
    holder = nn.ParameterDict(params)
    torch_averaged = torch_swa.AveragedModel(holder, **torch_kwargs)
    for i in range(8):
        with torch.no_grad():
            for k in params:
                holder[k].copy_(torch.tensor(sequence[k][i]))
        torch_averaged.update_parameters(holder)
    for k in params:
        np.testing.assert_allclose(
            state.params[k], torch_averaged.module[k].detach().numpy(), rtol=1e-6, atol=1e-7
        )
    assert int(state.n_averaged) == 8


def test_averaged_model_of_a_pytree() -> None:
    tree = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    averaged = swa_utils.AveragedModel(tree)
    for scale in (1.0, 2.0, 6.0):
        averaged.update_parameters(jax.tree.map(lambda x, s=scale: x + s, tree))
    np.testing.assert_allclose(averaged.module["w"], np.full((2, 3), 4.0))
    np.testing.assert_allclose(averaged.module["b"], np.full(3, 3.0))
    with pytest.raises(ValueError, match="b"):
        averaged.update_parameters({"w": jnp.ones((2, 3)), "b": jnp.zeros(4)})


def test_averaged_model_refuses_two_rules_as_torch() -> None:
    model, torch_model = _pair()
    fns = dict(avg_fn=torch_swa.get_ema_avg_fn(), multi_avg_fn=torch_swa.get_ema_multi_avg_fn())
    with pytest.raises(Exception) as theirs:  # noqa: PT011 - the type is torch's, asked below
        torch_swa.AveragedModel(torch_model, **fns)
    ours_fns = dict(
        avg_fn=swa_utils.get_ema_avg_fn(), multi_avg_fn=swa_utils.get_ema_multi_avg_fn()
    )
    with pytest.raises(type(theirs.value), match=str(theirs.value)):
        swa_utils.AveragedModel(model, **ours_fns)


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_ema_decay_out_of_range_is_torchs_error(decay: float) -> None:
    with pytest.raises(ValueError) as theirs:
        torch_swa.get_ema_multi_avg_fn(decay)
    with pytest.raises(ValueError, match=re.escape(str(theirs.value))):
        swa_utils.get_ema_multi_avg_fn(decay)


# ------------------------------------------------------------------------------------------
# update_bn
# ------------------------------------------------------------------------------------------


def _batches() -> list[np.ndarray]:
    x = load_iris().x_train
    return [x[:40], x[40:90], x[90:]]  # unequal sizes: the average is over batches, as torch's


def test_update_bn_equals_torchs() -> None:
    model, torch_model = _pair()
    model.eval()
    torch_model.eval()
    swa_utils.update_bn([(b, None) for b in _batches()], model)
    torch_swa.update_bn([(torch.tensor(b), None) for b in _batches()], torch_model)
    _assert_close(_named(model), _torch_named(torch_model), BUFFERS, rtol=2e-6)
    # the momentum, the variance mode and eval mode are as they were
    assert model.bn.momentum == 0.99 and model.bn.use_fast_variance is False
    assert model.bn.use_running_average is True
    assert type(model.bn) is nnx.BatchNorm
    x = _batches()[0]
    np.testing.assert_allclose(
        model(x), torch_model(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_update_bn_with_no_batches_resets_as_torch() -> None:
    model, torch_model = _pair()
    _write(model, {"bn.mean": np.full(16, 3.0, np.float32)})
    swa_utils.update_bn([], model)
    torch_swa.update_bn([], torch_model)
    _assert_close(_named(model), _torch_named(torch_model), BUFFERS)


# ------------------------------------------------------------------------------------------
# SWALR
# ------------------------------------------------------------------------------------------


def _optimizers(groups: int = 2):
    ours = jopt.optim.SGD(
        [{"params": [jnp.zeros(2)], "lr": 0.5}, {"params": [jnp.zeros(2)]}][:groups], lr=0.1
    )
    theirs = torch.optim.SGD(
        [{"params": [torch.zeros(2)], "lr": 0.5}, {"params": [torch.zeros(2)]}][:groups], lr=0.1
    )
    return ours, theirs


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(swa_lr=0.05),
        dict(swa_lr=[0.05, 0.01], anneal_epochs=4, anneal_strategy="linear"),
        dict(swa_lr=0.2, anneal_epochs=0),
        dict(swa_lr=[0.3, 0.02], anneal_epochs=7, anneal_strategy="cos"),
    ],
)
def test_swalr_lrs_equal_torchs(kwargs: dict) -> None:
    ours, theirs = _optimizers()
    sched, torch_sched = swa_utils.SWALR(ours, **kwargs), torch_swa.SWALR(theirs, **kwargs)
    for _ in range(15):
        np.testing.assert_allclose(
            [g["lr"] for g in ours.param_groups],
            [g["lr"] for g in theirs.param_groups],
            rtol=1e-13,
        )
        np.testing.assert_allclose(sched.get_last_lr(), torch_sched.get_last_lr(), rtol=1e-13)
        ours.step([[jnp.ones(2)], [jnp.ones(2)]])
        theirs.step()
        sched.step()
        torch_sched.step()
    assert [g["swa_lr"] for g in ours.param_groups] == [g["swa_lr"] for g in theirs.param_groups]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_swalr_state_dict_round_trip_continues_the_sequence() -> None:
    ours, theirs = _optimizers()
    sched = swa_utils.SWALR(ours, swa_lr=0.05, anneal_epochs=6)
    torch_sched = torch_swa.SWALR(theirs, swa_lr=0.05, anneal_epochs=6)
    for _ in range(3):
        sched.step()
        torch_sched.step()
    saved = sched.state_dict()
    assert set(saved) == set(torch_sched.state_dict())
    fresh, _ = _optimizers()  # torch's resume order: build both, then load both
    resumed = swa_utils.SWALR(fresh, swa_lr=0.9, anneal_epochs=2, anneal_strategy="linear")
    fresh.load_state_dict(ours.state_dict())
    resumed.load_state_dict(saved)
    for _ in range(5):
        resumed.step()
        torch_sched.step()
        np.testing.assert_allclose(
            [g["lr"] for g in fresh.param_groups],
            [g["lr"] for g in theirs.param_groups],
            rtol=1e-13,
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(swa_lr=[0.1, 0.2, 0.3]),
        dict(swa_lr=0.1, anneal_strategy="exp"),
        dict(swa_lr=0.1, anneal_epochs=-1),
        dict(swa_lr=0.1, anneal_epochs=2.5),
    ],
)
def test_swalr_bad_arguments_raise_torchs_errors(kwargs: dict) -> None:
    ours, theirs = _optimizers()
    with pytest.raises(Exception) as expected:  # noqa: PT011 - the type is torch's
        torch_swa.SWALR(theirs, **kwargs)
    with pytest.raises(type(expected.value)) as got:
        swa_utils.SWALR(ours, **kwargs)
    assert str(got.value) == str(expected.value)


# ------------------------------------------------------------------------------------------
# torch's SWA recipe, ported
# ------------------------------------------------------------------------------------------

EPOCHS, SWA_START = 24, 12


def _loader() -> list[tuple[np.ndarray, np.ndarray]]:
    data = load_iris()
    x, y = data.x_train, data.y_train
    return [(x[i : i + 30], y[i : i + 30]) for i in range(0, len(y), 30)]


def _torch_recipe(model: TorchNet):
    loader = [(torch.tensor(x), torch.tensor(y).long()) for x, y in _loader()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    swa_model = torch_swa.AveragedModel(model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    swa_scheduler = torch_swa.SWALR(optimizer, swa_lr=0.05, anneal_epochs=5)
    lrs = []
    for epoch in range(EPOCHS):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        if epoch > SWA_START:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    torch_swa.update_bn(loader, swa_model)
    return swa_model, lrs


def _loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _jopt_recipe(model: Net):
    loader = _loader()
    optimizer = jopt.optim.SGD(model, lr=0.1, momentum=0.9)
    swa_model = swa_utils.AveragedModel(model)
    scheduler = jopt.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    swa_scheduler = swa_utils.SWALR(optimizer, swa_lr=0.05, anneal_epochs=5)
    lrs = []
    for epoch in range(EPOCHS):
        for x, y in loader:
            optimizer.step(_loss, x, y)
        if epoch > SWA_START:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    swa_utils.update_bn(loader, swa_model)
    return swa_model, lrs


def test_torchs_swa_recipe_ports_line_for_line() -> None:
    model, torch_model = _pair()
    torch.set_num_threads(1)
    theirs, torch_lrs = _torch_recipe(torch_model)
    ours, lrs = _jopt_recipe(model)
    np.testing.assert_allclose(lrs, torch_lrs, rtol=1e-13)
    assert int(ours.n_averaged[...]) == int(theirs.n_averaged) == EPOCHS - SWA_START - 1
    _assert_close(_named(ours.module), _torch_named(theirs.module), PARAMS, rtol=2e-5, atol=2e-6)
    _assert_close(_named(ours.module), _torch_named(theirs.module), BUFFERS, rtol=2e-5, atol=2e-6)
    x = load_iris().x_test
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(
        ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=2e-5, atol=2e-5
    )
