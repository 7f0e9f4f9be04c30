"""``jopt train --prune ... --quantize int8``: the run's sparsity, bytes and accuracies, in the
table and the JSON; the flags' checks; the report against torch's quantized model. The sweep's
compression flags are in ``test_sweep_compress.py``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from jopt.cli import main
from jopt.train import RunConfig, run
from jopt.train.compress import compression_report, dense_epochs

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch")


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("schedule", ["oneshot", pytest.param("gradual", marks=pytest.mark.slow)])
def test_train_prunes_quantizes_and_reports(capsys, schedule):
    code = main(["train", "--json", "--no-cache", "--prune", "l1", "--sparsity", "0.5",
                 "--prune-schedule", schedule, "--quantize", "int8"])
    out, err = capsys.readouterr()
    assert code == 0
    summary = last_json(out)
    weights = 4 * 16 + 16 * 3  # the 4-16-3 MLP's weight matrices
    assert summary["sparsity"] == round(0.5 * weights) / weights
    assert summary["float_test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert summary["quantized_model_bytes"] < summary["model_bytes"]
    assert summary["quantized_test_accuracy"] >= 0.85
    dense = summary["history"]["test_accuracy"][dense_epochs(
        RunConfig(prune="l1", prune_schedule=schedule)) - 1]
    assert summary["dense_test_accuracy"] == pytest.approx(dense)
    assert "compression" in err and "before pruning" in err and "int8" in err


@pytest.mark.slow
def test_dense_runs_report_without_a_table(capsys):
    assert main(["train", "--json", "--no-cache", "--epochs", "3"]) == 0
    out, err = capsys.readouterr()
    summary = last_json(out)
    assert summary["sparsity"] < 0.05 and summary["quantized_model_bytes"] is None
    assert summary["dense_test_accuracy"] is None and "compression" not in err


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "0.5"], "sparsity is used by --prune only"),
    (["--prune-schedule", "gradual"], "prune_schedule is used by --prune only"),
    (["--prune", "l2"], "unknown pruning 'l2'"),
    (["--prune", "l1", "--sparsity", "1.5"], "--sparsity: must be at most 1"),
    (["--quantize", "int4"], "unknown quantization 'int4'"),
])
def test_bad_compression_flags_exit_2_with_one_line(capsys, argv, message):
    assert main(["train", "--no-cache", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def test_a_pruned_run_resumes_only_with_its_epochs():
    assert "epochs" in RunConfig(prune="l1").resume_record()
    assert "epochs" not in RunConfig().resume_record()
    assert RunConfig(prune="l1").resolved().sparsity == 0.5


def test_report_matches_torch_quantized_model():
    config = RunConfig(prune="l1-layer", sparsity=0.6, quantize="int8", epochs=60)
    result = run(config)
    from jopt.train import load_iris

    data = load_iris(config.test_size, config.split_seed)
    report = compression_report(result.graphdef, result.params, data, "int8")
    layers = result.params["layers"]
    for i in layers:  # l1-layer: each matrix at the sparsity on its own
        kernel = np.asarray(layers[i]["kernel"])
        assert np.sum(kernel == 0) == round(0.6 * kernel.size)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    for i, j in ((0, 0), (1, 2)):
        net[j].weight.data = torch.tensor(np.asarray(layers[i]["kernel"]).T.copy())
        net[j].bias.data = torch.tensor(np.asarray(layers[i]["bias"]))
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "x86"  # fbgemm's scheme, which jopt follows
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear},
                                                               dtype=torch.qint8)
        predictions = quantized(torch.tensor(np.asarray(data.x_test))).argmax(-1).numpy()
    finally:
        torch.backends.quantized.engine = engine
    accuracy = float(np.mean(predictions == np.asarray(data.y_test)))
    assert report["quantized_test_accuracy"] == accuracy
    assert report["model_bytes"] == sum(p.numel() * 4 for p in net.parameters())


def test_compare_across_sparsities(capsys):
    """``jopt compare --sparsities 0,0.5``: each optimizer dense and pruned, each row's
    measured sparsity in the JSON, and the pruned run equal to ``jopt train --prune l1``."""
    code = main(["compare", "--json", "--no-cache", "--optimizers", "sgd", "--epochs", "8",
                 "--sparsities", "0,0.5"])
    out, _ = capsys.readouterr()
    assert code == 0
    rows = last_json(out)["results"]
    weights = 4 * 16 + 16 * 3
    assert [(r["optimizer"], r["prune"]) for r in rows] == [("sgd", "none"), ("sgd", "l1")]
    assert rows[0]["sparsity"] < 0.05
    assert rows[1]["sparsity"] == round(0.5 * weights) / weights
    alone = run(RunConfig(optimizer="sgd", epochs=8, prune="l1", sparsity=0.5))
    assert rows[1]["final_test_loss"] == pytest.approx(alone.final("test_loss"), rel=1e-6)
    assert main(["compare", "--sparsities", "1.5"]) == 2
    assert "fractions in [0, 1)" in capsys.readouterr().err
