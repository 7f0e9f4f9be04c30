"""The ``jopt`` command: train, compare and sweep the Iris recipe.

    jopt train --optimizer adam --epochs 100 --plot run.png
    jopt compare --optimizers sgd,momentum,rmsprop,adam --plot curves.png
    jopt sweep --optimizer adam --lr-min 1e-4 --lr-max 1 --runs 256 --json

Every command takes ``--json``: the last line of stdout is then one JSON object, and the human
output (progress bar, tables) goes to stderr. Bad input exits with status 2 and one line on
stderr. The persistent compilation cache (``$JOPT_CACHE_DIR``, default ``~/.cache/jopt/xla``)
makes a second identical run load its programs instead of compiling them.

A new subcommand is a function ``add(subparsers)`` that registers its parser with
``set_defaults(handler=...)``, listed in ``COMMANDS``; the handler takes the parsed arguments
and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = [c.strip(" '") for c in bad.group(2).split(",")]
            message = _suggest(bad.group(1), choices, "command")
        raise UsageError(f"{self.prog}: {message}")


# --------------------------------------------------------------------------------------------
# Argument types and checks (no JAX needed)
# --------------------------------------------------------------------------------------------

OPTIMIZER_NAMES = ("sgd", "momentum", "rmsprop", "adam", "adamw", "adagrad")
SCHEDULE_NAMES = (
    "none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau", "inverse-sqrt"
)


def _suggest(name: str, choices: Sequence[str], what: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; choose from {', '.join(choices)}"


def _choice(choices: Sequence[str], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        name = text.strip().lower().replace("_", "-")
        if name in choices:
            return name
        raise argparse.ArgumentTypeError(_suggest(text, choices, what))

    parse.__name__ = what
    return parse


def _number(kind: type, what: str, minimum: float | None = None, strict: bool = False) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            if minimum == 0:
                bound = "positive" if strict else "non-negative"
            else:
                bound = f"> {minimum}" if strict else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = what
    return parse


def _int_list(what: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers, got {text!r}"
            ) from None
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"must be positive integers, got {text!r}")
        return values

    parse.__name__ = what
    return parse


def _optimizer_list(text: str) -> tuple[str, ...]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("needs at least one optimizer name")
    return tuple(_choice(OPTIMIZER_NAMES, "optimizer")(n) for n in names)


def _add_common(p: argparse.ArgumentParser) -> None:
    """The recipe's flags shared by every command."""
    p.add_argument("--epochs", type=_number(int, "--epochs", 0, strict=True), default=100,
                   help="training epochs (default 100)")
    p.add_argument("--batch-size", type=_number(int, "--batch-size", 0, strict=True),
                   default=16, help="mini-batch size, 1..training rows (default 16)")
    p.add_argument("--drop-last", action="store_true", help="drop the short last batch")
    p.add_argument("--weight-decay", type=_number(float, "--weight-decay", 0.0), default=None,
                   help="the optimizer's weight_decay (default: torch's for the optimizer)")
    p.add_argument("--l2", type=_number(float, "--l2", 0.0), default=1e-3,
                   help="L2 penalty l2/2*|W|^2 on the weight matrices in the loss "
                        "(default 1e-3)")
    p.add_argument("--schedule", type=_choice(SCHEDULE_NAMES, "schedule"), default="none",
                   metavar="NAME",
                   help="learning-rate schedule, counted in epochs (onecycle: in steps): "
                        + ", ".join(SCHEDULE_NAMES))
    p.add_argument("--gamma", type=_number(float, "--gamma", 0.0, strict=True), default=None,
                   help="decay factor of step/multistep/exponential/plateau")
    p.add_argument("--step-size", type=_number(int, "--step-size", 0, strict=True),
                   default=None, help="epochs between decays of 'step' (default epochs // 3)")
    p.add_argument("--milestones", type=_int_list("--milestones"), default=None,
                   metavar="EPOCHS",
                   help="epochs of the decays of 'multistep' (default 50%%,75%% of epochs)")
    p.add_argument("--hidden", type=_int_list("--hidden"), default=(16,), metavar="SIZES",
                   help="hidden layer sizes, comma-separated (default 16)")
    p.add_argument("--activation", default="relu", help="relu, tanh, gelu, silu, ...")
    p.add_argument("--init", default="torch",
                   help="initialisation: torch (nn.Linear's), lecun_normal, xavier_uniform, ...")
    p.add_argument("--seed", type=_number(int, "--seed", 0), default=0,
                   help="seed of the initialisation and the shuffling")
    p.add_argument("--split-seed", type=_number(int, "--split-seed", 0), default=0,
                   help="seed of the train/test split")
    p.add_argument("--test-size", type=_number(float, "--test-size", 0.0, strict=True),
                   default=0.2, help="fraction of rows held out for testing (default 0.2)")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="save a figure")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object as the last line of stdout")
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the persistent compilation cache")


def _add_lr(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr", type=_number(float, "--lr", 0.0), default=None,
                   help="learning rate (default: the recipe's for the optimizer)")


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def _console(args: argparse.Namespace) -> Any:
    from rich.console import Console

    return Console(stderr=bool(args.json), highlight=False)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, NumPy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(_clean(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def _epoch_table(history: dict[str, list[float]], first: int, every: int, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("epoch", "train loss", "test loss", "test acc", "lr"):
        table.add_column(name, justify="right")
    total = len(history["train_loss"])
    for i in range(total):
        epoch = i + 1
        if epoch % every and epoch != total and epoch != first + 1:
            continue
        table.add_row(
            str(epoch),
            _fmt(history["train_loss"][i]),
            _fmt(history["test_loss"][i]),
            f"{history['test_accuracy'][i]:.3f}",
            f"{history['lr'][i]:.3g}",
        )
    return table


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    """Checks needing no JAX, then the compilation cache and the counters."""
    if args.plot is not None:
        from jopt.train.plots import check_writable

        try:
            check_writable(args.plot)
        except OSError as e:
            raise UsageError(str(e)) from None
    from jopt.train.cache import CompileCounter, enable_compile_cache

    cache = None if args.no_cache else enable_compile_cache()
    counter = CompileCounter().start()
    return {"cache": cache, "counter": counter}


def _load_data(args: argparse.Namespace) -> Any:
    from jopt.train.data import load_iris

    try:
        data = load_iris(args.test_size, args.split_seed)
    except ValueError as e:
        raise UsageError(f"--test-size: {e}") from None
    n = len(data.x_train)
    if args.batch_size > n:
        raise UsageError(
            f"--batch-size {args.batch_size} is larger than the training set ({n} rows)"
        )
    return data


def _config(args: argparse.Namespace, **overrides: Any) -> Any:
    from jopt.train.model import ACTIVATIONS, INITS
    from jopt.train.runner import RunConfig

    if args.activation not in ACTIVATIONS:
        raise UsageError(_suggest(args.activation, list(ACTIVATIONS), "activation"))
    if args.init not in INITS:
        raise UsageError(_suggest(args.init, list(INITS), "init"))
    if args.schedule == "plateau" and args.gamma is not None and args.gamma >= 1:
        raise UsageError(f"--gamma for plateau must be below 1, got {args.gamma}")
    fields = dict(
        optimizer=getattr(args, "optimizer", "adam"),
        lr=getattr(args, "lr", None),
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        gamma=args.gamma,
        step_size=args.step_size,
        milestones=args.milestones,
        epochs=args.epochs,
        batch_size=args.batch_size,
        drop_last=args.drop_last,
        l2=args.l2,
        hidden=tuple(args.hidden),
        activation=args.activation,
        init=args.init,
        seed=args.seed,
        split_seed=args.split_seed,
        test_size=args.test_size,
    )
    fields.update(overrides)
    return RunConfig(**fields)


def _check_optimizer_args(config: Any) -> None:
    """The optimizer's own checks (torch's messages) as usage errors."""
    from jopt.train.recipes import make_optimizer

    try:
        make_optimizer(config.optimizer, config.lr, config.weight_decay)
    except ValueError as e:
        raise UsageError(f"{config.optimizer}: {e}") from None


def _progress(console: Any, label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


def _compile_report(setup: dict[str, Any]) -> dict[str, Any]:
    stats = setup["counter"].stop()
    return {
        "compile_seconds": stats.seconds,
        "xla_compile_seconds": stats.compile_seconds,
        "programs_compiled": stats.cache_misses if setup["cache"] else stats.programs,
        "cache_hits": stats.cache_hits,
        "cache_dir": str(setup["cache"]) if setup["cache"] else None,
    }


# --------------------------------------------------------------------------------------------
# jopt train
# --------------------------------------------------------------------------------------------


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train the MLP on Iris with one optimizer",
                       description="Train the 4-16-3 MLP on Iris with one optimizer.")
    p.add_argument("--optimizer", type=_choice(OPTIMIZER_NAMES, "optimizer"), default="adam",
                   metavar="NAME", help=", ".join(OPTIMIZER_NAMES) + " (default adam)")
    _add_lr(p)
    _add_common(p)
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save checkpoints here (orbax)")
    p.add_argument("--checkpoint-every", type=_number(int, "--checkpoint-every", 0, True),
                   default=25, help="epochs between checkpoints (default 25; and the last)")
    p.add_argument("--keep", type=_number(int, "--keep", 0, strict=True), default=3,
                   help="checkpoints kept (default 3)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--log-every", type=_number(int, "--log-every", 0, strict=True),
                   default=10, metavar="N", help="epochs between rows of the table (default 10)")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume and args.checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint-dir")
    setup = _setup(args)
    data = _load_data(args)
    config = _config(args)
    _check_optimizer_args(config)

    from jopt.train.checkpoint import CheckpointError, Checkpoints
    from jopt.train.recipes import DEFAULT_LR
    from jopt.train.runner import run

    console = _console(args)
    checkpoints = None
    if args.checkpoint_dir is not None:
        checkpoints = Checkpoints(args.checkpoint_dir, keep=args.keep)
        try:  # fail before compiling anything: a wrong directory is a usage error
            if args.resume and checkpoints.latest() is not None:
                checkpoints.record(config.as_record())
            elif not args.resume and checkpoints.epochs():
                raise CheckpointError(
                    f"{checkpoints.directory} already holds checkpoints (epochs "
                    f"{', '.join(map(str, checkpoints.epochs()))}); pass --resume to continue "
                    "them or choose another --checkpoint-dir"
                )
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    lr = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
    progress = _progress(console, f"{config.optimizer} lr={lr:g}")
    with progress:
        task = progress.add_task("train", total=config.epochs, status="")

        def on_start(first: int) -> None:
            progress.update(task, completed=first)

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            status = f"loss {_fmt(row['train_loss'])}  acc {row['test_accuracy']:.3f}"
            progress.update(task, completed=epoch, status=status)

        try:
            result = run(config, checkpoints=checkpoints,
                         checkpoint_every=args.checkpoint_every, resume=args.resume,
                         on_epoch=on_epoch, on_start=on_start)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    report = _compile_report(setup)
    first = result.resumed_from or 0
    title = f"{config.optimizer}, lr {lr:g}, schedule {config.schedule}, batch {config.batch_size}"
    console.print(_epoch_table(result.history, first, args.log_every, title))
    steps = (config.epochs - first) * _steps(data, config)
    summary = {
        "command": "train",
        "optimizer": config.optimizer,
        "lr": lr,
        "schedule": config.schedule,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "weight_decay": _weight_decay(config),
        "l2": config.l2,
        "hidden": list(config.hidden),
        "seed": config.seed,
        "final_train_loss": result.final("train_loss"),
        "final_test_loss": result.final("test_loss"),
        "test_accuracy": result.final("test_accuracy"),
        "train_accuracy": result.final("train_accuracy"),
        "final_lr": result.final("lr"),
        "train_seconds": result.train_seconds,
        "steps": steps,
        "us_per_step": 1e6 * result.train_seconds / steps if steps else None,
        **report,
        "resumed_from": result.resumed_from,
        "checkpoints": result.checkpoints,
        "plot": args.plot,
        "history": result.history,
    }
    console.print(
        f"test accuracy {summary['test_accuracy']:.3f}, test loss "
        f"{_fmt(summary['final_test_loss'])}; trained in {result.train_seconds:.3f} s "
        f"after {report['compile_seconds']:.2f} s of compilation"
        + (f" ({report['cache_hits']} programs from the cache)" if report["cache_hits"] else "")
    )
    if args.plot:
        from jopt.train.plots import plot_history

        _write_plot(lambda: plot_history(result.history, args.plot, title), args.plot, console)
    if args.json:
        _emit_json(summary)
    return 0


def _weight_decay(config: Any) -> float:
    """The weight decay the run used: the flag, else the optimizer's (torch's) default."""
    if config.weight_decay is not None:
        return config.weight_decay
    import inspect

    from jopt.train.recipes import OPTIMIZERS

    return inspect.signature(OPTIMIZERS[config.optimizer]).parameters["weight_decay"].default


def _steps(data: Any, config: Any) -> int:
    from jopt.train.data import num_batches

    return num_batches(len(data.x_train), config.batch_size, config.drop_last)


def _write_plot(draw: Callable[[], Any], path: str, console: Any) -> None:
    try:
        draw()
    except OSError as e:
        raise UsageError(f"cannot write plot {path!r}: {e.strerror or e}") from None
    console.print(f"wrote {path}")


# --------------------------------------------------------------------------------------------
# jopt compare
# --------------------------------------------------------------------------------------------


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="train several optimizers and compare their curves",
                       description="Train the Iris MLP with several optimizers, same seed.")
    p.add_argument("--optimizers", type=_optimizer_list, metavar="NAMES",
                   default=("sgd", "momentum", "rmsprop", "adam"),
                   help="comma-separated (default sgd,momentum,rmsprop,adam)")
    _add_lr(p)
    _add_common(p)
    p.set_defaults(handler=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    setup = _setup(args)
    _load_data(args)  # checks --test-size and --batch-size against the data
    configs = [_config(args, optimizer=name) for name in args.optimizers]
    for config in configs:
        _check_optimizer_args(config)

    from rich.table import Table

    from jopt.train.recipes import DEFAULT_LR
    from jopt.train.runner import run

    console = _console(args)
    results = []
    with _progress(console, "compare") as progress:
        task = progress.add_task("compare", total=len(configs) * args.epochs, status="")
        for config in configs:
            done = progress.tasks[0].completed

            def on_epoch(epoch: int, row: dict[str, float], done: float = done,
                         name: str = config.optimizer) -> None:
                progress.update(task, completed=done + epoch, status=name)

            results.append(run(config, on_epoch=on_epoch))
    report = _compile_report(setup)
    table = Table(title=f"Iris, {args.epochs} epochs, batch {args.batch_size}",
                  title_justify="left")
    for name in ("optimizer", "lr", "train loss", "test loss", "test acc", "train s"):
        table.add_column(name, justify="right")
    summaries = []
    for config, result in zip(configs, results):
        lr = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
        summary = {
            "optimizer": config.optimizer,
            "lr": lr,
            "epochs": config.epochs,
            "final_train_loss": result.final("train_loss"),
            "final_test_loss": result.final("test_loss"),
            "test_accuracy": result.final("test_accuracy"),
            "train_seconds": result.train_seconds,
            "compile_seconds": result.compile_seconds,
        }
        summaries.append(summary)
        table.add_row(config.optimizer, f"{lr:g}", _fmt(summary["final_train_loss"]),
                      _fmt(summary["final_test_loss"]), f"{summary['test_accuracy']:.3f}",
                      f"{result.train_seconds:.3f}")
    console.print(table)
    if args.plot:
        from jopt.train.plots import plot_compare

        histories = {c.optimizer: r.history for c, r in zip(configs, results)}
        _write_plot(lambda: plot_compare(histories, args.plot, title="Iris"), args.plot, console)
    if args.json:
        _emit_json({"command": "compare", "results": summaries, **report})
    return 0


# --------------------------------------------------------------------------------------------
# jopt sweep
# --------------------------------------------------------------------------------------------


def _add_sweep(sub: Any) -> None:
    p = sub.add_parser("sweep", help="train many learning rates at once (vmap, one compile)",
                       description="Train --runs learning rates, log-spaced, in one program.")
    p.add_argument("--optimizer", type=_choice(OPTIMIZER_NAMES, "optimizer"), default="adam",
                   metavar="NAME", help=", ".join(OPTIMIZER_NAMES) + " (default adam)")
    p.add_argument("--lr-min", type=_number(float, "--lr-min", 0.0, strict=True), default=1e-4,
                   help="smallest learning rate (default 1e-4)")
    p.add_argument("--lr-max", type=_number(float, "--lr-max", 0.0, strict=True), default=1.0,
                   help="largest learning rate (default 1)")
    p.add_argument("--runs", type=_number(int, "--runs", 0, strict=True), default=256,
                   help="learning rates, log-spaced (default 256)")
    p.add_argument("--vary-seed", action="store_true",
                   help="give run k the seed --seed + k (default: all runs share --seed)")
    _add_common(p)
    p.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.lr_min > args.lr_max:
        raise UsageError(f"--lr-min {args.lr_min:g} is above --lr-max {args.lr_max:g}")
    setup = _setup(args)
    data = _load_data(args)
    config = _config(args, optimizer=args.optimizer, lr=args.lr_min)
    _check_optimizer_args(config)

    import numpy as np

    from jopt.train.recipes import OPTIMIZERS, make_lr_schedule
    from jopt.train.steps import Plateau, sweep

    console = _console(args)
    lrs = np.geomspace(args.lr_min, args.lr_max, args.runs)
    seeds = args.seed + np.arange(args.runs) if args.vary_seed else args.seed
    schedule = make_lr_schedule(config.schedule, config.epochs, _steps(data, config),
                                gamma=config.gamma, step_size=config.step_size,
                                milestones=config.milestones)
    with console.status(f"training {args.runs} runs of {args.optimizer}"):
        result = sweep(
            OPTIMIZERS[args.optimizer],
            data,
            lrs,
            weight_decays=args.weight_decay,
            seeds=seeds,
            model_fn=config.model_fn(data),
            epochs=config.epochs,
            batch_size=config.batch_size,
            drop_last=config.drop_last,
            l2=config.l2,
            lr_schedule=None if isinstance(schedule, Plateau) else schedule,
            plateau=schedule if isinstance(schedule, Plateau) else None,
        )
    report = _compile_report(setup)
    acc = result.history["test_accuracy"][:, -1]
    loss = result.history["test_loss"][:, -1]
    best = result.best()
    from rich.table import Table

    table = Table(title=f"{args.optimizer}: {args.runs} learning rates, {config.epochs} epochs",
                  title_justify="left")
    for name in ("lr", "test loss", "test acc"):
        table.add_column(name, justify="right")
    for i in np.unique(np.linspace(0, args.runs - 1, min(args.runs, 9)).astype(int)):
        table.add_row(f"{lrs[i]:.3g}", _fmt(float(loss[i])), f"{acc[i]:.3f}")
    console.print(table)
    runs_per_second = args.runs / result.train_seconds if result.train_seconds > 0 else None
    console.print(
        f"best lr {lrs[best]:.3g}: test accuracy {acc[best]:.3f}; {args.runs} runs in "
        f"{result.train_seconds:.3f} s ({runs_per_second:.0f} runs/s) after "
        f"{report['compile_seconds']:.2f} s of compilation"
    )
    if args.plot:
        from jopt.train.plots import plot_sweep

        title = f"{args.optimizer}, {config.epochs} epochs, batch {config.batch_size}"
        _write_plot(lambda: plot_sweep(lrs, acc, loss, args.plot, title), args.plot, console)
    if args.json:
        _emit_json({
            "command": "sweep",
            "optimizer": args.optimizer,
            "runs": args.runs,
            "epochs": config.epochs,
            "seconds": result.train_seconds,
            "runs_per_second": runs_per_second,
            **report,
            "best_lr": float(lrs[best]),
            "best_test_accuracy": float(acc[best]),
            "best_test_loss": float(loss[best]),
            "lrs": lrs.tolist(),
            "test_accuracy": acc.tolist(),
            "test_loss": loss.tolist(),
        })
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[Any], None]] = [_add_train, _add_compare, _add_sweep]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jopt", description="PyTorch's optimizers rebuilt for JAX: "
                     "train an MLP on Iris with them.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jopt`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except KeyboardInterrupt:
        print("jopt: interrupted (checkpoints already written are complete)", file=sys.stderr)
        return 130
    except UsageError as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else "bad input"
        if not message.startswith("jopt"):
            message = f"jopt {args.command}: {message}" if args else f"jopt: {message}"
        print(f"{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
