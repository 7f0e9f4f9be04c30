"""The learning-rate finder: its smoothing and suggestions against closed forms, its runs
against plain loops of the same steps, and ``jopt lr-find``'s outputs and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jopt
from jopt.cli import main
from jopt.train import finder, load_iris, lr_find

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    return load_iris()


def test_smoothing_is_the_bias_corrected_exponential_average() -> None:
    """``a_t / (1 - s^(t+1))`` with ``a_t = (1 - s) sum_k s^(t-k) loss_k``, in closed form."""
    losses = np.random.default_rng(0).uniform(0.5, 2.0, 50)
    s = 0.9
    t = np.arange(50)
    weights = (1 - s) * s ** (t[:, None] - t[None, :]) * (t[None, :] <= t[:, None])
    want = (weights @ losses) / (1 - s ** (t + 1))
    np.testing.assert_allclose(finder.smooth(losses, s), want, rtol=1e-12)


def test_suggestions_on_curves_with_known_answers() -> None:
    """On ``loss = -tanh(log lr - c)`` the loss falls fastest at ``lr = e^c``; on
    ``(log lr - m)^2`` the lowest loss is at ``e^m``."""
    lrs = np.geomspace(1e-5, 10.0, 61)
    u = np.log(lrs)
    c, m = u[23], u[40]
    steepest, _ = finder.suggest(lrs, -np.tanh(u - c))
    assert steepest == lrs[np.argmin(np.abs(u - c))]
    _, low = finder.suggest(lrs, (u - m) ** 2)
    assert low == pytest.approx(np.exp(m) / 10)
    # skip_begin leaves out a steep warm-up at the start
    warm = -np.tanh(u - c) + 5 * np.exp(-(t := np.arange(61)))
    assert finder.suggest(lrs, warm)[0] != lrs[23]
    assert finder.suggest(lrs, warm, skip_begin=10)[0] == lrs[23]
    assert np.isnan(finder.suggest(lrs[:0], lrs[:0])[0]) and t.size


def test_divergence_cut() -> None:
    rising = np.array([3.0, 2.0, 1.0, 1.5, 3.9, 4.1, 9.0])
    assert finder.kept_until_divergence(rising, 4.0) == 5  # 4.1 > 4 * 1.0
    assert finder.kept_until_divergence(np.array([3.0, 2.0, np.nan, 1.0]), 4.0) == 2
    assert finder.kept_until_divergence(np.linspace(2, 1, 9), 4.0) == 9


def test_range_test_is_a_run_whose_rate_grows_step_by_step(data) -> None:
    """Step ``t`` trains at ``lrs[t]``: the same losses as a Python loop that assigns the rate
    of an ``inject_hyperparams`` SGD before each step, on the same batches."""
    steps = 12
    result = lr_find(jopt.sgd, data, lr_min=1e-3, lr_max=1.0, steps=steps, momentum=0.9)
    np.testing.assert_allclose(result.lrs, np.geomspace(1e-3, 1.0, steps), rtol=1e-12)
    params, loss = finder._problem(data, None, 0, 0.0)
    rows = finder._batches(len(data.x_train), 16, steps, 0)
    opt = jopt.inject_hyperparams(jopt.sgd)(lr=1e-3, momentum=0.9)
    state = opt.init(params)
    grad = jax.jit(jax.value_and_grad(loss))
    want = []
    for t in range(steps):
        state.hyperparams["lr"] = jnp.asarray(result.lrs[t], jnp.float32)
        value, grads = grad(params, rows[t])
        updates, state = opt.update(grads, state, params)
        params = jopt.apply_updates(params, updates)
        want.append(float(value))
    np.testing.assert_allclose(result.losses, want, rtol=1e-5)
    np.testing.assert_allclose(result.smoothed, finder.smooth(result.losses, 0.98), rtol=1e-12)


def test_batches_are_shuffled_epochs(data) -> None:
    rows = np.asarray(finder._batches(120, 16, 20, 0))
    assert rows.shape == (20, 16)
    first_epoch = rows[:7].ravel()  # 7 full batches of 16 out of 120 rows
    assert len(set(first_epoch.tolist())) == 112


def test_vmap_grid_equals_separate_runs(data) -> None:
    """Each rate of the grid is an independent run from the same start on the same batches:
    the mean of its last steps' losses is that of ``jopt.unroll`` at that rate."""
    result = lr_find(jopt.adam, data, lr_min=1e-4, lr_max=1.0, steps=20, method="vmap", runs=5)
    params, loss = finder._problem(data, None, 0, 0.0)
    rows = finder._batches(len(data.x_train), 16, 20, 0)
    for k in (0, 3):
        run = jopt.unroll(jopt.adam(lr=float(result.lrs[k])), loss, params, 20, batches=rows)
        assert float(result.losses[k]) == pytest.approx(float(jnp.mean(run.losses[-2:])),
                                                        rel=1e-5)
    assert result.kept == 5 or result.kept < 5 and result.diverged


def test_divergence_stops_the_range_test(data) -> None:
    result = lr_find(jopt.sgd, data, lr_min=1e-3, lr_max=1e3, steps=60)
    assert result.diverged and result.kept < 60
    assert result.lrs[0] <= result.suggestion < result.lrs[result.kept]
    assert result.min_over_10 < result.lrs[result.kept]


def test_bad_arguments(data) -> None:
    with pytest.raises(ValueError, match="lr_min < lr_max"):
        lr_find(jopt.sgd, data, lr_min=1.0, lr_max=0.1)
    with pytest.raises(ValueError, match="method must be"):
        lr_find(jopt.sgd, data, method="grid")
    with pytest.raises(ValueError, match="batch_size must be"):
        lr_find(jopt.sgd, data, batch_size=1000)


def test_cli_json_and_plot(capsys, tmp_path: Path) -> None:
    plot = tmp_path / "lr.png"
    code = main(["lr-find", "--optimizer", "sgd", "--steps", "40", "--json", "--no-cache",
                 "--plot", str(plot)])
    out, err = capsys.readouterr()
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["command"] == "lr-find" and summary["method"] == "range"
    assert len(summary["lrs"]) == len(summary["losses"]) == 40
    assert summary["suggestion"] == summary["steepest"]
    assert summary["lrs"][0] <= summary["suggestion"] <= summary["lrs"][-1]
    assert "suggested lr" in err
    data = plot.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def test_cli_vmap(capsys) -> None:
    code = main(["lr-find", "--optimizer", "adam", "--method", "vmap", "--runs", "6",
                 "--steps", "10", "--json", "--no-cache"])
    out, _ = capsys.readouterr()
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["method"] == "vmap" and len(summary["lrs"]) == 6


BAD = [
    (["--lr-min", "1", "--lr-max", "0.1"], "is not below --lr-max"),
    (["--optimizer", "nope"], "unknown optimizer 'nope'"),
    (["--method", "grid"], "unknown method 'grid'"),
    (["--steps", "1"], "--steps: must be > 1"),
    (["--lr-min", "0"], "--lr-min: must be positive"),
    (["--diverge", "1"], "--diverge: must be > 1"),
    (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    (["--batch-size", "500"], "--batch-size 500 is larger than the training set"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, message) -> None:
    assert main(["lr-find", *argv, "--no-cache"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and message in err, err
    assert err.startswith("jopt") and "Traceback" not in err


def test_cli_unwritable_plot(capsys, tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    assert main(["lr-find", "--no-cache", "--plot", str(tmp_path / "dir.png")]) == 2
    assert "is a directory" in capsys.readouterr()[1]


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_suggestion_trains_well_in_a_sweep(data, name: str) -> None:
    """The range test's suggestion (the recipe: batch 16, l2 1e-3, the 4-16-3 MLP) lies where a
    sweep of full 100-epoch runs of the same recipe reaches a test accuracy of at least 0.9: both
    rates of a log grid around the suggestion do, while the grid's ends do not."""
    factory = {"adam": jopt.adam, "sgd": jopt.sgd}[name]
    found = lr_find(factory, data, lr_min=1e-4, lr_max=10.0, steps=100, l2=1e-3)
    lrs = np.geomspace(1e-4, 10.0, 16)
    swept = jopt.train.sweep(factory, data, lrs, epochs=100, batch_size=16, l2=1e-3)
    accuracy = swept.history["test_accuracy"][:, -1]
    assert accuracy[0] < 0.9 and accuracy[-1] < 0.9  # too small and too large both fail
    above = int(np.searchsorted(lrs, found.suggestion))
    assert 0 < above < len(lrs), found.suggestion
    neighbours = accuracy[above - 1 : above + 1]
    assert np.all(neighbours >= 0.9 - 1e-6), (found.suggestion, lrs, accuracy)
