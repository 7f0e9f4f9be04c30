"""Compiled training on Iris: accuracy bands, schedules, sweeps, donation, no recompiles."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jopt
from jopt.train import (
    MLP,
    EarlyStopping,
    RunConfig,
    Session,
    Trainer,
    fit,
    init_model,
    load_iris,
    set_hyperparams,
    sweep,
)
from jopt.train.cache import CompileCounter
from jopt.train.data import num_batches
from jopt.train.lr import find_hyperparams
from jopt.train.steps import make_train_step

SESSION = Session()
run = SESSION.run


@pytest.fixture(scope="module")
def data():
    return load_iris()


def model_fn(rngs):
    return MLP(rngs=rngs)


# The recipe's runs: 100 epochs of batch 16 on the default split. Its test set holds 3 points
# every model here gets wrong (0.9 is the ceiling on this split), so the bands also ask for a
# low training loss, which a broken optimizer or a wrong update cannot reach.
BANDS = {
    "sgd": (0.9, 0.08),
    "momentum": (0.9, 0.06),
    "rmsprop": (0.9, 0.06),
    "adam": (0.9, 0.06),
    "adamw": (0.9, 0.06),
    "adagrad": (0.9, 0.06),
}


@pytest.mark.parametrize("name", list(BANDS))
def test_every_optimizer_reaches_its_band(name):
    min_accuracy, max_loss = BANDS[name]
    result = run(RunConfig(optimizer=name))
    assert result.final("test_accuracy") >= min_accuracy - 1e-6
    assert result.final("train_loss") <= max_loss
    assert result.final("train_accuracy") >= 0.95
    assert result.history["train_loss"][0] > 3 * result.final("train_loss")


def test_torch_default_sgd_rate_is_out_of_band():
    # torch's SGD default (lr=1e-3) barely moves in 100 epochs: the band test can fail.
    torch = pytest.importorskip("torch")
    default = inspect.signature(torch.optim.SGD).parameters["lr"].default
    result = run(RunConfig(optimizer="sgd", lr=default))
    assert result.final("train_loss") > 0.3


def torch_rates(config, scheduler, *args, steps_per_epoch=1, metrics=None, **kwargs):
    """The rate of each epoch of ``config``'s run by torch's ``lr_scheduler.<scheduler>`` over
    an optimizer at the run's learning rate: stepped after each of ``steps_per_epoch`` steps
    an epoch (the epoch's rate is its last step's), with ``metrics[epoch]`` when given."""
    torch = pytest.importorskip("torch")
    c = config.resolved()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c.lr)
    sched = getattr(torch.optim.lr_scheduler, scheduler)(opt, *args, **kwargs)
    rates = []
    for epoch in range(c.epochs):
        for _ in range(steps_per_epoch):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step(*([] if metrics is None else [float(metrics[epoch])]))
    return rates[steps_per_epoch - 1 :: steps_per_epoch]


def test_step_schedule_counts_epochs():
    config = RunConfig(schedule="step", epochs=12, step_size=4, gamma=0.5)
    result = run(config)
    expected = torch_rates(config, "StepLR", step_size=4, gamma=0.5)
    np.testing.assert_allclose(result.history["lr"], expected, rtol=1e-6)


def test_onecycle_counts_steps(data):
    config = RunConfig(schedule="onecycle", epochs=6)
    result = run(config)
    steps = num_batches(len(data.x_train), config.batch_size)
    expected = torch_rates(config, "OneCycleLR", config.resolved().lr,
                           total_steps=config.epochs * steps, steps_per_epoch=steps)
    np.testing.assert_allclose(result.history["lr"], expected, rtol=1e-5)


def test_plateau_acts_on_the_epochs_training_loss():
    """torch's ReduceLROnPlateau with its defaults (patience 10) and the recipe's factor."""
    config = RunConfig(schedule="plateau")
    result = run(config)
    lrs, losses = result.history["lr"], result.history["train_loss"]
    expected = torch_rates(config, "ReduceLROnPlateau", factor=config.resolved().gamma,
                           metrics=losses)  # the epoch ran at the rate set after the last one
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert min(lrs) < lrs[0]  # it did reduce


def test_sweep_equals_runs_one_by_one(data):
    lrs, wds, seeds = [1e-3, 1e-2, 0.1], [0.0, 1e-4, 1e-3], [0, 1, 2]
    with CompileCounter() as counter:
        result = sweep(
            jopt.adam,
            data,
            lrs,
            weight_decays=wds,
            seeds=seeds,
            model_fn=model_fn,
            epochs=10,
            l2=1e-3,
        )
    assert counter.stats.programs <= 3  # init, states, and the K runs: one program each
    opt = jopt.inject_hyperparams(jopt.adam)(lr=lrs[0], weight_decay=wds[0])
    graphdef, _ = init_model(model_fn, 0)
    trainer = Trainer(graphdef, opt, num_train=len(data.x_train), batch_size=16, l2=1e-3)
    for k in range(3):
        _, params = init_model(model_fn, seeds[k])
        state = trainer.init(params, seeds[k], lr=lrs[k], weight_decay=wds[k])
        alone = fit((graphdef, params), opt, data, epochs=10, trainer=trainer, state=state)
        # vmap batches the products, and XLA sums over the batch rows in another order:
        # equal up to float rounding, not bit for bit.
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(result.state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[k], rtol=1e-4, atol=1e-5)
        for metric in ("train_loss", "test_loss", "lr"):
            np.testing.assert_allclose(alone.history[metric], result.history[metric][k], rtol=1e-4)
        np.testing.assert_array_equal(
            alone.history["test_accuracy"], result.history["test_accuracy"][k]
        )


def test_fit_in_one_call_equals_epoch_by_epoch(data):
    graphdef, params = init_model(model_fn, 0)
    opt = jopt.adam(lr=1e-2)
    whole = fit((graphdef, params), opt, data, epochs=8, l2=1e-3)
    seen = []
    steps = fit(
        (graphdef, params),
        opt,
        data,
        epochs=8,
        l2=1e-3,
        callbacks=[lambda epoch, metrics, state: seen.append((epoch, int(state.epoch)))],
    )
    assert seen == [(e, e) for e in range(1, 9)]
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(steps.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert np.isnan(whole.history["lr"]).all()  # a plain optimizer: the rate is not data


def test_fit_takes_optax_and_chains(data):
    graphdef, params = init_model(model_fn, 0)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    )
    result = fit((graphdef, params), opt, data, epochs=60)
    assert result.final("test_accuracy") >= 0.85
    assert result.final("lr") == pytest.approx(1e-2)
    assert isinstance(result.model, MLP)


def test_train_step_donates_and_lr_changes_do_not_recompile(data):
    graphdef, params = init_model(model_fn, 0)
    opt = jopt.inject_hyperparams(jopt.adam)(lr=1e-2)
    step = make_train_step(graphdef, opt)
    state = opt.init(params)
    x, y = jnp.asarray(data.x_train[:16]), jnp.asarray(data.y_train[:16])
    first_leaf = jax.tree.leaves(params)[0]
    params, state, loss = step(params, state, x, y)
    assert first_leaf.is_deleted()  # updated in place
    for lr in (1e-3, 3e-3, 0.1):
        state = set_hyperparams(state, lr=lr)
        params, state, loss = step(params, state, x, y)
        assert float(find_hyperparams(state)["lr"]) == pytest.approx(lr)
    with CompileCounter() as counter:  # the changed rates are data: nothing recompiles
        for lr in (1e-4, 0.3):
            params, state, loss = step(params, set_hyperparams(state, lr=lr), x, y)
    assert counter.stats.programs == 0


def test_set_hyperparams_errors():
    state = jopt.adam(lr=1e-2).init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="inject_hyperparams"):
        set_hyperparams(state, lr=0.1)
    injected = jopt.inject_hyperparams(jopt.adam)(lr=1e-2).init({"w": jnp.zeros(2)})
    with pytest.raises(KeyError, match="momentum"):
        set_hyperparams(injected, momentum=0.1)


def test_model_options():
    shapes = nnx.eval_shape(lambda: MLP(4, (8, 8), 3, activation="tanh", init="xavier_uniform",
                                        rngs=nnx.Rngs(0)))
    assert [layer.kernel.shape for layer in shapes.layers] == [(4, 8), (8, 8), (8, 3)]
    _, params = init_model(model_fn, 0)  # torch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    first = params["layers"][0]
    assert np.abs(np.asarray(first["kernel"])).max() <= 1 / np.sqrt(4)
    assert np.abs(np.asarray(first["bias"])).max() > 0  # biases drawn too, as in torch
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="rleu", rngs=nnx.Rngs(0))


def test_early_stopping_ends_the_run_where_the_metric_stalls(data):
    graphdef, params = init_model(model_fn, 0)
    stop = EarlyStopping("test_loss", patience=3)
    result = fit((graphdef, params), jopt.adam(lr=0.3), data, epochs=100, callbacks=[stop])
    losses = result.history["test_loss"]
    epochs = len(losses)
    assert epochs < 100 and int(result.state.epoch) == epochs
    best = int(np.argmin(losses))
    assert best == epochs - 4  # stopped after 3 epochs without a new minimum
    assert (losses[best + 1:] >= losses[best]).all()


def test_a_config_is_checked_before_anything_compiles():
    with CompileCounter() as counter:
        with pytest.raises(ValueError, match="rprop takes no weight_decay"):
            run(RunConfig(optimizer="rprop", weight_decay=0.1))
        with pytest.raises(ValueError, match="did you mean 'adam'"):
            run(RunConfig(optimizer="adm"))
    assert counter.stats.programs == 0


def test_final_of_an_empty_history_is_an_error(data):
    graphdef, params = init_model(model_fn, 0)
    result = fit((graphdef, params), jopt.adam(lr=0.1), data, epochs=0)
    with pytest.raises(ValueError, match="no epoch"):
        result.final("test_loss")
