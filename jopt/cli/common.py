"""What the commands share: argument types and checks, the recipe's flags, and output.

Nothing heavy is imported at module level (the training code, matplotlib and orbax come with
the commands that use them), so bad input is reported at once.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = [c.strip(" '") for c in bad.group(2).split(",")]
            message = suggest(bad.group(1), choices, "command")
        raise UsageError(f"{self.prog}: {message}")


# --------------------------------------------------------------------------------------------
# Argument types and checks (no JAX needed)
# --------------------------------------------------------------------------------------------

OPTIMIZER_NAMES = (
    "sgd", "momentum", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam",
    "radam", "rprop", "asgd", "adafactor", "muon", "sparse_adam",
)
SCHEDULE_NAMES = (
    "none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau", "inverse-sqrt"
)


def suggest(name: str, choices: Sequence[str], what: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; choose from {', '.join(choices)}"


def choice_of(choices: Sequence[str], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        name = text.strip().lower().replace("_", "-")
        if name in choices:
            return name
        raise argparse.ArgumentTypeError(suggest(text, choices, what))

    parse.__name__ = what
    return parse


def number(kind: type, what: str, minimum: float | None = None, strict: bool = False) -> Any:
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


def int_list(what: str) -> Callable[[str], tuple[int, ...]]:
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


def optimizer_list(text: str) -> tuple[str, ...]:
    """Comma-separated optimizer names, or ``all``."""
    if text.strip() == "all":
        return OPTIMIZER_NAMES
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("needs at least one optimizer name")
    return tuple(choice_of(OPTIMIZER_NAMES, "optimizer")(n) for n in names)


def add_common(p: argparse.ArgumentParser) -> None:
    """The recipe's flags shared by every command."""
    p.add_argument("--epochs", type=number(int, "--epochs", 0, strict=True), default=100,
                   help="training epochs (default 100)")
    p.add_argument("--batch-size", type=number(int, "--batch-size", 0, strict=True),
                   default=16, help="mini-batch size, 1..training rows (default 16)")
    p.add_argument("--drop-last", action="store_true", help="drop the short last batch")
    p.add_argument("--weight-decay", type=number(float, "--weight-decay", 0.0), default=None,
                   help="the optimizer's weight_decay (default: torch's for the optimizer)")
    p.add_argument("--l2", type=number(float, "--l2", 0.0), default=1e-3,
                   help="L2 penalty l2/2*|W|^2 on the weight matrices in the loss "
                        "(default 1e-3)")
    p.add_argument("--schedule", type=choice_of(SCHEDULE_NAMES, "schedule"), default="none",
                   metavar="NAME",
                   help="learning-rate schedule, counted in epochs (onecycle: in steps): "
                        + ", ".join(SCHEDULE_NAMES))
    p.add_argument("--gamma", type=number(float, "--gamma", 0.0, strict=True), default=None,
                   help="decay factor of step/multistep/exponential/plateau")
    p.add_argument("--step-size", type=number(int, "--step-size", 0, strict=True),
                   default=None, help="epochs between decays of 'step' (default epochs // 3)")
    p.add_argument("--milestones", type=int_list("--milestones"), default=None,
                   metavar="EPOCHS",
                   help="epochs of the decays of 'multistep' (default 50%%,75%% of epochs)")
    p.add_argument("--hidden", type=int_list("--hidden"), default=(16,), metavar="SIZES",
                   help="hidden layer sizes, comma-separated (default 16)")
    p.add_argument("--activation", default="relu", help="relu, tanh, gelu, silu, ...")
    p.add_argument("--init", default="torch",
                   help="initialisation: torch (nn.Linear's), lecun_normal, xavier_uniform, ...")
    p.add_argument("--seed", type=number(int, "--seed", 0), default=0,
                   help="seed of the initialisation and the shuffling")
    p.add_argument("--split-seed", type=number(int, "--split-seed", 0), default=0,
                   help="seed of the train/test split")
    p.add_argument("--test-size", type=number(float, "--test-size", 0.0, strict=True),
                   default=0.2, help="fraction of rows held out for testing (default 0.2)")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="save a figure")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object as the last line of stdout")
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the persistent compilation cache")


def add_optimizer(p: argparse.ArgumentParser) -> None:
    """``--optimizer NAME``, one of jopt's optimizers (train and sweep take one)."""
    p.add_argument("--optimizer", type=choice_of(OPTIMIZER_NAMES, "optimizer"), default="adam",
                   metavar="NAME", help=", ".join(OPTIMIZER_NAMES) + " (default adam)")


def add_lr(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr", type=number(float, "--lr", 0.0), default=None,
                   help="learning rate (default: the recipe's for the optimizer)")


# --------------------------------------------------------------------------------------------
# Output and setup
# --------------------------------------------------------------------------------------------


def make_console(args: argparse.Namespace) -> Any:
    from rich.console import Console

    return Console(stderr=bool(args.json), highlight=False)


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, NumPy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(clean(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def epoch_table(history: dict[str, list[float]], first: int, every: int, title: str) -> Any:
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
            fmt(history["train_loss"][i]),
            fmt(history["test_loss"][i]),
            f"{history['test_accuracy'][i]:.3f}",
            f"{history['lr'][i]:.3g}",
        )
    return table


def start(args: argparse.Namespace) -> dict[str, Any]:
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


def load_data(args: argparse.Namespace) -> Any:
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


def run_config(args: argparse.Namespace, **overrides: Any) -> Any:
    from jopt.train.model import ACTIVATIONS, INITS
    from jopt.train.runner import RunConfig

    if args.activation not in ACTIVATIONS:
        raise UsageError(suggest(args.activation, list(ACTIVATIONS), "activation"))
    if args.init not in INITS:
        raise UsageError(suggest(args.init, list(INITS), "init"))
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


def check_optimizer(config: Any) -> None:
    """The optimizer's own checks (torch's messages) as usage errors."""
    from jopt.train.recipes import make_optimizer

    try:
        make_optimizer(config.optimizer, config.lr, config.weight_decay)
    except ValueError as e:
        raise UsageError(f"{config.optimizer}: {e}") from None


def progress_bar(console: Any, label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


def compile_report(setup: dict[str, Any]) -> dict[str, Any]:
    stats = setup["counter"].stop()
    return {
        "compile_seconds": stats.seconds,
        "xla_compile_seconds": stats.compile_seconds,
        "programs_compiled": stats.cache_misses if setup["cache"] else stats.programs,
        "cache_hits": stats.cache_hits,
        "cache_dir": str(setup["cache"]) if setup["cache"] else None,
    }


def weight_decay_of(config: Any) -> float | None:
    """The weight decay the run used: the flag, else the optimizer's (torch's) default (None
    for an optimizer that has none)."""
    if config.weight_decay is not None:
        return config.weight_decay
    import inspect

    from jopt.train.recipes import OPTIMIZERS

    parameter = inspect.signature(OPTIMIZERS[config.optimizer]).parameters.get("weight_decay")
    return None if parameter is None else parameter.default


def steps_per_epoch(data: Any, config: Any) -> int:
    from jopt.train.data import num_batches

    return num_batches(len(data.x_train), config.batch_size, config.drop_last)


def write_plot(draw: Callable[[], Any], path: str, console: Any) -> None:
    try:
        draw()
    except OSError as e:
        raise UsageError(f"cannot write plot {path!r}: {e.strerror or e}") from None
    console.print(f"wrote {path}")
