"""``jopt sweep --prune ... --quantize int8`` and ``jopt.train.sweep(pruning=...)``: each run
prunes its own weights and equals the single run at its learning rate (``jopt train --lr``);
the best run's quantized model is the one ``jopt train --quantize int8`` reports."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

import jopt
from jopt import prune
from jopt.cli import main
from jopt.train import RunConfig, load_iris, run, sweep
from jopt.train.compress import make_pruning, sparsities
from jopt.train.data import num_batches
from jopt.train.recipes import make_lr_control
from jopt.train.runner import model_factory
from jopt.transforms.pruning import MagnitudePruningState

WEIGHTS = 4 * 16 + 16 * 3  # the 4-16-3 MLP's weight matrices


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def masks(opt_state: object) -> list[np.ndarray]:
    """The pruning masks held in an optimizer state (one tree of them per pruning state)."""
    found = [s for s in jax.tree.leaves(opt_state,
                                        is_leaf=lambda x: isinstance(x, MagnitudePruningState))
             if isinstance(s, MagnitudePruningState)]
    (only,) = found
    return [np.asarray(m) for m in jax.tree.leaves(only.mask)]


def test_each_run_prunes_its_own_weights_as_a_single_run_would():
    """``sweep(..., pruning=make_pruning(config))`` with a schedule of the base rate: run ``k``
    equals ``run(config with lr=lrs[k])`` (parameters within float tolerance, the masks and
    the sparsity exactly), and the runs' masks differ."""
    config = RunConfig(optimizer="sgd", epochs=6, prune="l1-layer", sparsity=0.5,
                       schedule="exponential")
    data = load_iris(config.test_size, config.split_seed)
    steps = num_batches(len(data.x_train), config.batch_size)
    lrs = [0.05, 0.5]
    result = sweep(jopt.sgd, data, lrs, model_fn=model_factory(config, data),
                   epochs=config.epochs, l2=config.l2, lr_control=make_lr_control(config, steps),
                   pruning=make_pruning(config, steps))
    measured = sparsities(result.state.params)
    for k, lr in enumerate(lrs):
        alone = run(dataclasses.replace(config, lr=lr), data=data)
        mine = jax.tree.map(lambda x, k=k: np.asarray(x)[k], result.state)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(mine.params)):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5)
        for a, b in zip(masks(alone.state.opt_state), masks(mine.opt_state)):
            np.testing.assert_array_equal(a, b)
        assert measured[k] == prune.sparsity(alone.params, where=prune.matrices)
        assert measured[k] == prune.sparsity(result.params_of(k), where=prune.matrices)
        np.testing.assert_allclose(alone.history["lr"], result.history["lr"][k], rtol=1e-6)
        np.testing.assert_allclose(alone.history["test_loss"], result.history["test_loss"][k],
                                   rtol=1e-4)
    assert result.history["lr"][1, 0] == pytest.approx(lrs[1])  # the rate reached the optimizer
    assert any(not np.array_equal(a, b) for a, b in zip(*(
        masks(jax.tree.map(lambda x, k=k: np.asarray(x)[k], result.state.opt_state))
        for k in range(2))))


def test_cli_sweep_reports_sparsity_and_the_best_runs_quantized_model(capsys):
    """``jopt sweep --prune l1 --quantize int8``: each run's measured sparsity, test accuracy
    and accuracy before pruning are ``jopt train --lr lrs[k]``'s; the best run's compression
    report is ``jopt train --quantize int8``'s at the best rate."""
    flags = ["--json", "--no-cache", "--optimizer", "sgd", "--epochs", "6", "--prune", "l1",
             "--sparsity", "0.5", "--quantize", "int8"]
    assert main(["sweep", *flags, "--runs", "2", "--lr-min", "0.05", "--lr-max", "0.5"]) == 0
    out, err = capsys.readouterr()
    swept = last_json(out)
    assert "weights pruned" in err and "compression of the best run" in err
    assert swept["prune"] == "l1" and swept["target_sparsity"] == 0.5
    assert swept["best_sparsity"] == round(0.5 * WEIGHTS) / WEIGHTS
    best = swept["lrs"].index(swept["best_lr"])
    for k, lr in enumerate(swept["lrs"]):
        assert main(["train", *flags, "--lr", repr(lr)]) == 0
        alone = last_json(capsys.readouterr()[0])
        assert swept["sparsity"][k] == alone["sparsity"]
        assert swept["test_accuracy"][k] == pytest.approx(alone["test_accuracy"], abs=1e-6)
        assert swept["test_loss"][k] == pytest.approx(alone["final_test_loss"], rel=1e-4)
        assert swept["dense_test_accuracy"][k] == pytest.approx(alone["dense_test_accuracy"],
                                                                abs=1e-6)
        if k == best:
            report = swept["best_compression"]
            assert report["quantized_model_bytes"] == alone["quantized_model_bytes"]
            assert report["model_bytes"] == alone["model_bytes"]
            assert report["sparsity"] == alone["sparsity"]
            assert report["quantized_test_accuracy"] == pytest.approx(
                alone["quantized_test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_gradual_pruning_in_a_sweep(capsys):
    """The gradual schedule reaches the target in every run of a sweep."""
    assert main(["sweep", "--json", "--no-cache", "--runs", "3", "--epochs", "8", "--prune",
                 "l1-layer", "--prune-schedule", "gradual", "--sparsity", "0.75"]) == 0
    swept = last_json(capsys.readouterr()[0])
    assert swept["sparsity"] == [(48 + 36) / WEIGHTS] * 3  # l1-layer: 3/4 of each matrix
    assert swept["best_compression"]["quantized_model_bytes"] is None


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "0.5"], "sparsity is used by --prune only"),
    (["--prune", "l1", "--sparsity", "1.5"], "--sparsity: must be at most 1"),
    (["--quantize", "int4"], "unknown quantization 'int4'"),
])
def test_bad_compression_flags_exit_2_with_one_line(capsys, argv, message):
    assert main(["sweep", "--no-cache", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def test_sweep_takes_pruning_or_a_trainer_not_both():
    data = load_iris()
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: jopt.train.MLP(rngs=nnx.Rngs(0))))
    trainer = jopt.train.Trainer(graphdef, jopt.sgd(lr=0.1), num_train=len(data.x_train))
    with pytest.raises(ValueError, match="give a trainer or pruning"):
        sweep(jopt.sgd, data, [0.1], epochs=1, trainer=trainer,
              pruning=jopt.magnitude_pruning(0.5))
