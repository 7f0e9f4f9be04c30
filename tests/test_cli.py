"""The jopt command: its outputs (JSON, tables, PNGs), checkpoints, errors, and the cache."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from jopt.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG
    assert len(data) > 10_000  # a drawn figure, not an empty canvas


def test_console_script_is_declared():
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("jopt") == "jopt.cli:main"


def test_train_json_table_and_plot(capsys, tmp_path):
    plot = tmp_path / "run.png"
    code = main(["train", "--json", "--no-cache", "--plot", str(plot)])
    out, err = capsys.readouterr()
    assert code == 0
    summary = last_json(out)
    for key in ("optimizer", "epochs", "final_train_loss", "final_test_loss", "test_accuracy",
                "train_seconds", "compile_seconds"):
        assert key in summary
    assert summary["optimizer"] == "adam" and summary["epochs"] == 100
    assert len(summary["history"]["test_accuracy"]) == 100
    assert summary["test_accuracy"] >= 0.9 - 1e-6  # the defaults train Adam to 0.9
    assert "train loss" in err and "test acc" in err  # the table, on stderr with --json
    assert out.strip().count("\n") == 0  # stdout holds the JSON line only
    assert_png(plot)


def test_train_without_json_prints_the_table(capsys):
    assert main(["train", "--no-cache", "--log-every", "25"]) == 0
    out, _ = capsys.readouterr()
    assert "test acc" in out and "│    25 │" in out and "│   100 │" in out
    assert "│    10 │" not in out


def test_compare_json_and_plot(capsys, tmp_path):
    plot = tmp_path / "curves.png"
    code = main(["compare", "--optimizers", "sgd,adam", "--json", "--no-cache", "--plot",
                 str(plot)])
    out, _ = capsys.readouterr()
    assert code == 0
    results = last_json(out)["results"]
    assert [r["optimizer"] for r in results] == ["sgd", "adam"]
    assert all(r["test_accuracy"] >= 0.9 - 1e-6 for r in results)
    assert_png(plot)


def test_sweep_json_and_plot(capsys, tmp_path):
    plot = tmp_path / "sweep.png"
    code = main(["sweep", "--runs", "5", "--lr-min", "1e-3", "--lr-max", "0.1", "--epochs",
                 "12", "--json", "--no-cache", "--plot", str(plot)])
    out, _ = capsys.readouterr()
    assert code == 0
    summary = last_json(out)
    assert summary["runs"] == 5 and len(summary["lrs"]) == 5
    assert summary["best_lr"] in summary["lrs"]
    assert summary["best_test_accuracy"] == max(summary["test_accuracy"])
    assert summary["lrs"][0] == pytest.approx(1e-3) and summary["lrs"][-1] == pytest.approx(0.1)
    assert_png(plot)


def test_checkpoint_flags(capsys, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    args = ["train", "--no-cache", "--json", "--checkpoint-dir", ckpt, "--checkpoint-every",
            "40", "--keep", "2"]
    assert main(args) == 0
    first = last_json(capsys.readouterr()[0])
    assert first["checkpoints"] == [80, 100]
    assert main(args) == 2  # would overwrite
    err = capsys.readouterr()[1]
    assert "already holds checkpoints" in err and err.count("\n") == 1
    assert main(args + ["--resume"]) == 0
    again = last_json(capsys.readouterr()[0])
    assert again["resumed_from"] == 100 and again["history"] == first["history"]
    assert main(args + ["--resume", "--lr", "0.3"]) == 2
    err = capsys.readouterr()[1]
    assert "different run: lr" in err and err.count("\n") == 1
    assert sorted(p for p in os.listdir(ckpt) if not p.startswith(".")) == [
        "epoch_100", "epoch_80"]


BAD = [
    (["train", "--optimizer", "adm"], "did you mean 'adam'"),
    (["train", "--schedule", "cosin"], "did you mean 'cosine'"),
    (["compare", "--optimizers", "sgd,rmsprp"], "did you mean 'rmsprop'"),
    (["trian"], "did you mean 'train'"),
    (["train", "--lr", "-0.1"], "--lr: must be non-negative"),
    (["train", "--epochs", "-5"], "--epochs: must be positive"),
    (["train", "--epochs", "0"], "--epochs: must be positive"),
    (["train", "--batch-size", "0"], "--batch-size: must be positive"),
    (["train", "--batch-size", "121"], "larger than the training set (120 rows)"),
    (["train", "--plot", "/nonexistent-dir/x.png"], "does not exist"),
    (["train", "--plot", "run.jpeg"], "must end in"),
    (["train", "--resume"], "--resume needs --checkpoint-dir"),
    (["train", "--lr", "fast"], "must be a number"),
    (["train", "--hidden", "16,x"], "comma-separated integers"),
    (["train", "--activation", "rleu"], "did you mean 'relu'"),
    (["sweep", "--lr-min", "1", "--lr-max", "0.01"], "above --lr-max"),
    (["train", "--optimizer", "adam", "--weight-decay", "-1"], "must be non-negative"),
    (["train", "--optimizer", "rprop", "--weight-decay", "0.1"], "rprop takes no weight_decay"),
    (["train", "--schedule", "plateau", "--gamma", "2"], "plateau schedule must be below 1"),
    (["train", "--init", "xavier"], "did you mean 'xavier_"),
    (["train", "--seed", str(2**64)], "--seed: must be at most 4.29497e+09"),
    (["train", "--schedule", "step", "--step-size", str(10**12)], "--step-size: must be at most"),
    (["train", "--hidden", "1000000000"], "--hidden: must be at most 65536"),
    (["sweep", "--runs", str(10**9)], "--runs: must be at most 65536"),
    (["train", "--lr", "1e308"], "--lr: must be 0 or between"),
    (["train", "--lr", "1e-320"], "--lr: must be 0 or between"),
    (["train", "--milestones", "5"], "milestones is used by the multistep schedule only"),
    (["train", "--schedule", "multistep", "--milestones", "50,500"], "beyond the 100 epochs"),
    (["train", "--step-size", "5"], "step_size is used by the step schedule only"),
    (["train", "--checkpoint-dir", ""], "must not be empty"),
]


def test_every_optimizer_has_a_recipe_and_torchs_weight_decay():
    import inspect

    from jopt.cli.flags import optimizer_list
    from jopt.train import names
    from jopt.train.recipes import OPTIMIZERS

    assert optimizer_list("all") == names.OPTIMIZERS == tuple(OPTIMIZERS)
    for name, factory in OPTIMIZERS.items():
        parameter = inspect.signature(factory).parameters.get("weight_decay")
        assert names.WEIGHT_DECAY[name] == (None if parameter is None else parameter.default)


def test_registries_name_what_the_model_builds():
    from jopt.train import model, names

    assert tuple(model.ACTIVATIONS) == names.ACTIVATIONS
    for init in names.INITS:  # every name builds a model
        model.MLP(init=init, rngs=__import__("flax").nnx.Rngs(0))


def test_flags_come_from_the_config_fields():
    import dataclasses

    from jopt.cli.flags import Parser, add_config, config_of
    from jopt.train.config import RunConfig, number, setting

    @dataclasses.dataclass(frozen=True)
    class Extended(RunConfig):
        warmup_epochs: int = setting(0, "epochs of linear warmup", number(int, 0))

    parser = Parser(prog="jopt train")
    add_config(parser, Extended)
    assert "--warmup-epochs" in parser.format_help() and "linear warmup" in parser.format_help()
    config = config_of(parser.parse_args(["--warmup-epochs", "5", "--batch-size", "8"]), Extended)
    assert config == Extended(warmup_epochs=5, batch_size=8)
    with pytest.raises(Exception, match="--warmup-epochs: must be non-negative"):
        parser.parse_args(["--warmup-epochs", "-1"])
    flags = {a.dest for a in parser._actions} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(Extended)}


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main([*argv, "--no-cache"] if argv != ["trian"] else argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and message in err, err
    assert err.startswith("jopt") and "Traceback" not in err


def test_unwritable_plot_path(capsys, tmp_path):
    # Files in the way fail for every user, root included (permissions would not).
    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("")
    assert main(["train", "--no-cache", "--plot", str(in_the_way / "x.png")]) == 2
    assert "is not a directory" in capsys.readouterr()[1]
    (tmp_path / "dir.png").mkdir()
    assert main(["train", "--no-cache", "--plot", str(tmp_path / "dir.png")]) == 2
    assert "is a directory" in capsys.readouterr()[1]


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_unusable_checkpoint_directory_exits_2_before_training(capsys, tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = blocker if where == "file" else blocker / "ckpt"
    assert main(["train", "--no-cache", "--checkpoint-dir", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(target) in err and "Traceback" not in err


def test_a_bad_plot_keeps_the_json_result(capsys, tmp_path, monkeypatch):
    from jopt.train import plots

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_history", full_disk)
    code = main(["train", "--no-cache", "--json", "--epochs", "3", "--plot",
                 str(tmp_path / "x.png")])
    out, err = capsys.readouterr()
    assert code == 2 and "No space left on device" in err.splitlines()[-1]
    summary = last_json(out)
    assert len(summary["history"]["test_loss"]) == 3 and "No space" in summary["plot_error"]


def test_resume_without_checkpoints_says_so(capsys, tmp_path):
    ckpt = str(tmp_path / "empty")
    assert main(["train", "--no-cache", "--json", "--epochs", "2", "--checkpoint-dir", ckpt,
                 "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "no checkpoint in" in err
    assert last_json(out)["notes"] == [f"no checkpoint in {ckpt}: training from epoch 0"]


def run_module(args: list[str], cache: Path) -> dict:
    env = {**os.environ, "JOPT_CACHE_DIR": str(cache)}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-m", "jopt", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return last_json(done.stdout)


def test_python_m_jopt_and_the_compilation_cache(tmp_path):
    args = ["train", "--epochs", "5", "--json"]
    first = run_module(args, tmp_path / "cache")
    assert first["programs_compiled"] >= 2 and first["cache_hits"] == 0
    second = run_module(args, tmp_path / "cache")
    assert second["programs_compiled"] == 0  # everything came from the cache
    assert second["cache_hits"] == first["programs_compiled"]
    assert second["final_train_loss"] == first["final_train_loss"]
    assert any((tmp_path / "cache").iterdir())
