"""Checks that need 8 devices: run in their own process by ``test_sharding.py`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count is fixed when JAX
starts). Collected directly (``python -m pytest tests/sharded_checks.py``) they skip on fewer
devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jopt

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices: test_sharding.py runs it in its own process"
)

NAMES = sorted(n for n in jopt.optimizers.__all__ if callable(getattr(jopt, n, None)))
DEFAULT_RUN = ("adam", "sgd", "adafactor", "muon", "lbfgs")
"""The optimizers the default run checks; every one runs in CI's slow pass."""


def _table(names):
    return [pytest.param(n, marks=() if n in DEFAULT_RUN else pytest.mark.slow) for n in names]


ELEMENTWISE = [n for n in NAMES if n not in ("lbfgs", "muon", "adafactor")]
KWARGS = {"sgd": {"momentum": 0.9, "weight_decay": 0.01}, "rmsprop": {"momentum": 0.5}}


def _optimizer(name: str) -> jopt.GradientTransformation:
    if name == "muon":
        return jopt.muon(lr=0.02)
    return getattr(jopt, name)(**{"lr": 0.01, **KWARGS.get(name, {})})


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "layer": {"w": rng.normal(size=(16, 24)), "v": rng.normal(size=(32, 8))},
        "b": rng.normal(size=(8,)),
    }


def _placed(params: dict, mesh: Mesh) -> dict:
    """Matrices sharded over the mesh's axis along their first dimension; vectors replicated
    (torch-style FSDP shards every matrix; an 8-vector stays whole)."""

    def put(x):
        spec = PartitionSpec("fsdp") if x.ndim == 2 else PartitionSpec()
        return jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, spec))

    return jax.tree.map(put, params)


def _loss(params, x):
    h = jnp.tanh(x @ params["layer"]["w"][:, :8] + params["b"])
    return jnp.mean((h @ params["layer"]["v"][:8].T) ** 2)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("fsdp",))


@pytest.mark.parametrize("name", _table(NAMES))
def test_state_is_created_sharded_like_its_parameters(name, mesh):
    params = _placed(_params(), mesh)
    if name == "muon":
        params = {"layer": params["layer"]}
    opt = _optimizer(name)
    state = jopt.init_sharded(opt, params)
    expected = jopt.state_shardings(opt, params)
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    if name == "lbfgs":
        return
    # every per-parameter buffer is sharded as its parameter is
    flat_params = {
        jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    matched = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        key = jax.tree_util.keystr(path)
        for pkey, p in flat_params.items():
            if key.endswith(pkey) and leaf.shape == p.shape:
                assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), key
                matched += 1
    if name not in ("adafactor",):
        assert matched >= len(flat_params)


def _step(opt):
    def step(params, state, x):
        grads = jax.grad(_loss)(params, x)
        updates, state = opt.update(grads, state, params)
        return jopt.apply_updates(params, updates), state

    return step


@pytest.mark.parametrize("name", _table(ELEMENTWISE))
def test_fully_sharded_step_equals_one_device(name, mesh):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)
    opt = _optimizer(name)
    params = _placed(_params(), mesh)
    state = jopt.init_sharded(opt, params)
    shardings = (
        jax.tree.map(lambda p: p.sharding, params),
        jopt.state_shardings(opt, params),
    )
    step = jax.jit(
        _step(opt),
        in_shardings=(*shardings, NamedSharding(mesh, PartitionSpec())),
        out_shardings=shardings,
    )
    one = jax.devices()[0]
    ref_params = jax.device_put(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _params()), one)
    ref_state = opt.init(ref_params)
    ref_step = jax.jit(_step(opt))
    for _ in range(20):
        params, state = step(params, state, x)
        ref_params, ref_state = ref_step(ref_params, ref_state, x)
    # the sharded matmul's gradient sums in another order: float32 rounding, compounded
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((ref_params, ref_state))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


@pytest.mark.parametrize("name", _table(ELEMENTWISE))
def test_sharded_update_communicates_nothing(name, mesh):
    """The compiled update over sharded gradients, state and parameters holds no collective:
    each device updates its own shard (no all-gather of optimizer state)."""
    opt = _optimizer(name)
    params = _placed(_params(), mesh)
    state = jopt.init_sharded(opt, params)
    param_shardings = jax.tree.map(lambda p: p.sharding, params)
    state_shardings = jopt.state_shardings(opt, params)
    update = jax.jit(
        opt.update,
        in_shardings=(param_shardings, state_shardings, param_shardings),
        out_shardings=(param_shardings, state_shardings),
    )
    hlo = update.lower(params, state, params).compile().as_text()
    assert [c for c in COLLECTIVES if c in hlo] == [], name
    # and the program really is sharded: a shard of the (16, 24) matrix is (2, 24)
    assert "f32[2,24]" in hlo


# ------------------------------------------------------------------------------------------
# jopt.train over 8 devices
# ------------------------------------------------------------------------------------------

TRAIN = _table([n for n in NAMES if n != "lbfgs"])  # jopt.lbfgs is a step, not a transform


def _fit(name, placement, epochs=13):
    from flax import nnx

    from jopt.train import MLP, fit, load_iris
    from jopt.train.recipes import muon_with_adamw

    model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))
    # Muon takes the matrices; the MLP's biases go to AdamW, as `jopt train` pairs them
    opt = muon_with_adamw(lr=0.02) if name == "muon" else _optimizer(name)
    return fit(model, opt, load_iris(), epochs=epochs, batch_size=16, placement=placement)


@pytest.mark.parametrize("name", TRAIN)
def test_data_parallel_training_equals_one_device(name):
    """13 epochs of 8 steps (104 steps) with each batch split over 8 devices."""
    from jopt.train import Placement, make_mesh

    sharded = _fit(name, Placement(make_mesh(8)))
    one = _fit(name, None)
    assert sharded.state.params["layers"][0]["kernel"].sharding.is_fully_replicated
    for a, b in zip(jax.tree.leaves(sharded.state.params), jax.tree.leaves(one.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        sharded.history["train_loss"], one.history["train_loss"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", TRAIN)
def test_fully_sharded_training_shards_state_like_parameters(name):
    from jopt.train import Placement, make_mesh

    result = _fit(name, Placement(make_mesh(8), fsdp=True), epochs=4)
    one = _fit(name, None, epochs=4)
    kernel = result.state.params["layers"][0]["kernel"]  # (4, 16): split along the 16
    assert kernel.sharding.spec == PartitionSpec(None, "data")
    assert kernel.addressable_shards[0].data.shape == (4, 2)
    params = {
        jax.tree_util.keystr(p): x
        for p, x in jax.tree_util.tree_flatten_with_path(result.state.params)[0]
    }
    for path, leaf in jax.tree_util.tree_flatten_with_path(result.state.opt_state)[0]:
        key = jax.tree_util.keystr(path)
        owner = [p for k, p in params.items() if key.endswith(k) and p.shape == leaf.shape]
        if owner:
            assert leaf.sharding.is_equivalent_to(owner[0].sharding, leaf.ndim), key
    for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(one.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_a_sweep_splits_its_runs_over_the_devices():
    from jopt.train import Placement, load_iris, make_mesh, sweep

    lrs = np.geomspace(1e-3, 1e-1, 16)
    sharded = sweep(jopt.adam, load_iris(), lrs, epochs=5, placement=Placement(make_mesh(8)))
    one = sweep(jopt.adam, load_iris(), lrs, epochs=5)
    kernel = sharded.state.params["layers"][0]["kernel"]
    assert kernel.shape[0] == 16 and kernel.addressable_shards[0].data.shape[0] == 2
    np.testing.assert_allclose(
        sharded.history["test_loss"], one.history["test_loss"], rtol=1e-5, atol=1e-6
    )


def test_placements_refuse_what_does_not_split():
    from jopt.train import Placement, load_iris, make_mesh, sweep

    with pytest.raises(ValueError, match="batch size 12 does not split over 8 devices"):
        _fit_batch(12, Placement(make_mesh(8)))
    with pytest.raises(ValueError, match="6 runs do not split over 8 devices"):
        sweep(jopt.adam, load_iris(), np.ones(6), epochs=1, placement=Placement(make_mesh(8)))
    with pytest.raises(ValueError, match="asked for 9 devices, 8 available"):
        make_mesh(9)


def _fit_batch(batch_size, placement):
    from flax import nnx

    from jopt.train import MLP, fit, load_iris

    model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))
    return fit(model, jopt.sgd(0.1), load_iris(), epochs=1, batch_size=batch_size,
               placement=placement)


# ------------------------------------------------------------------------------------------
# The facade over sharded parameters
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
def test_facade_over_sharded_parameters_matches_the_unsharded_facade(name, mesh):
    """Sharded matrices keep buckets of their own (never concatenated across devices), their
    state is split as they are, and the steps equal the facade on one device."""
    import jopt.optim

    kwargs = {"lr": 0.01, **({"momentum": 0.9} if name != "Adam" else {})}
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)
    sharded = getattr(jopt.optim, name)(_placed(_params(), mesh), **kwargs)
    plain = getattr(jopt.optim, name)(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _params()), **kwargs
    )
    for _ in range(10):
        loss = sharded.step(_loss, x)
        ref = plain.step(_loss, x)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    w = sharded.params["layer"]["w"]
    assert w.sharding.spec == PartitionSpec("fsdp")
    assert w.addressable_shards[0].data.shape == (2, 24)
    # torch's state dict gathers, when asked: every entry whole, equal to the unsharded one
    # (up to the sharded gradient's order of summation, compounded over ten steps)
    ours, ref_sd = sharded.state_dict(), plain.state_dict()
    for index, entry in ref_sd["state"].items():
        for key, value in entry.items():
            np.testing.assert_allclose(
                np.asarray(ours["state"][index][key]), np.asarray(value), rtol=1e-4, atol=1e-5
            )


def test_pruning_sharded_parameters_keeps_the_mask_where_they_are(mesh):
    """``opt.prune`` over a sharded matrix: its mask is split as it is (the step stays free of
    collectives over it), and the pruned training equals the unsharded facade's."""
    import jopt.optim
    import jopt.prune

    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)
    plain_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _params())
    mask = jopt.prune.l1_unstructured(plain_params, 0.5, where=jopt.prune.matrices)
    sharded = jopt.optim.SGD(_placed(_params(), mesh), lr=0.01, momentum=0.9)
    plain = jopt.optim.SGD(plain_params, lr=0.01, momentum=0.9)
    for opt in (sharded, plain):
        opt.prune(mask)
    w_mask = sharded._groups[0].mask
    assert any(getattr(m.sharding, "spec", None) == PartitionSpec("fsdp") for m in w_mask.values())
    for _ in range(5):
        sharded.step(_loss, x)
        plain.step(_loss, x)
    for a, b, m in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(plain.params),
                       jax.tree.leaves(mask)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        assert np.all(np.asarray(a)[~np.asarray(m)] == 0)


# ------------------------------------------------------------------------------------------
# Checkpoints onto another mesh
# ------------------------------------------------------------------------------------------


def test_a_checkpoint_restores_onto_the_mesh_that_asks(tmp_path):
    """A state saved fully sharded over 8 devices comes back with the sharding the restoring
    run's placement gives each array — split 4 ways, replicated on 2, on one device — and
    with the values it was saved with."""
    import dataclasses

    from jopt.train.checkpoint import Checkpoints
    from jopt.train.runner import RunConfig, Session, restore_target

    config = RunConfig(optimizer="adam", epochs=2, devices=8, fsdp=True)
    _, trainer, params = Session().build(config)
    saved, _ = trainer.place(trainer.init(params, config.seed))
    assert not saved.params["layers"][0]["kernel"].sharding.is_fully_replicated
    Checkpoints(tmp_path).save(saved, config.resume_record(), {})
    for devices, fsdp in [(4, True), (2, False), (1, False)]:
        here = dataclasses.replace(config, devices=devices, fsdp=fsdp)
        _, trainer, params = Session().build(here)
        target = restore_target(trainer, trainer.init(params, here.seed))
        state, _ = Checkpoints(tmp_path).restore(target, here.resume_record(), 0)
        for got, want, value in zip(jax.tree.leaves(state), jax.tree.leaves(target),
                                    jax.tree.leaves(saved), strict=True):
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (devices, fsdp)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(value))
        if devices == 4:
            assert state.params["layers"][0]["kernel"].addressable_shards[0].data.shape == (4, 4)
        if devices == 1:
            for leaf in jax.tree.leaves(state):
                assert leaf.sharding.device_set == {jax.devices()[0]}
