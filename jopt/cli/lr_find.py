"""``jopt lr-find``: a learning rate for an optimizer on the Iris recipe, by Smith's range test
(one run, the rate growing exponentially) or a vmapped grid of short runs (one compile)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from jopt.cli.flags import add_config, add_output, config_of
from jopt.cli.output import finish, fmt, make_console
from jopt.cli.setup import check_optimizer, load_data, start
from jopt.train.config import RunConfig, choice, number, setting

MAX_STEPS = 1 << 16


@dataclasses.dataclass(frozen=True)
class LrFindConfig:
    """The finder's own settings; each field declares its flag, as ``RunConfig``'s do."""

    lr_min: float = setting(1e-6, "smallest learning rate (default 1e-6)",
                            number(float, 0.0, True))
    lr_max: float = setting(10.0, "largest learning rate (default 10)", number(float, 0.0, True))
    steps: int = setting(100, "steps of the range test, or of each run of the grid (default 100)",
                         number(int, 1, True, maximum=MAX_STEPS))
    method: str = setting("range", "range (one run, Smith's test) or vmap (a grid of short "
                          "runs, one compile) (default range)", choice(("range", "vmap"),
                                                                        "method"), "NAME")
    runs: int = setting(32, "rates of the vmap grid (default 32)",
                        number(int, 1, True, maximum=MAX_STEPS))
    smoothing: float = setting(0.98, "weight of the loss's exponential average (default 0.98)",
                               number(float, 0.0, maximum=0.999))
    diverge: float = setting(4.0, "stop when the loss passes this many times its lowest "
                             "(default 4)", number(float, 1.0, True))

    def check(self) -> None:
        if self.lr_min >= self.lr_max:
            raise ValueError(f"--lr-min {self.lr_min:g} is not below --lr-max {self.lr_max:g}")


# The recipe's flags that a finder run reads; the others (epochs, schedules, checkpoints,
# pruning, devices) describe a training run, not a finder's.
RECIPE = ("optimizer", "weight_decay", "batch_size", "l2", "hidden", "activation", "init",
          "seed", "split_seed", "test_size")


def add(sub: Any) -> None:
    p = sub.add_parser("lr-find", help="find a learning rate (range test or a vmapped grid)",
                       description="Suggest a learning rate for --optimizer: the steepest "
                       "descent of the loss against log lr, and a tenth of the best.")
    add_config(p, LrFindConfig)
    add_config(p, RunConfig,
               skip=[f.name for f in dataclasses.fields(RunConfig) if f.name not in RECIPE])
    add_output(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    finder = config_of(args, LrFindConfig)
    config = config_of(args, RunConfig, lr=finder.lr_min)
    setup = start(args)
    data = load_data(config)
    check_optimizer(config)

    from rich.table import Table

    from jopt.train.finder import lr_find, plot_lr_find
    from jopt.train.names import WEIGHT_DECAY
    from jopt.train.recipes import OPTIMIZERS
    from jopt.train.runner import model_factory

    console = make_console(args)
    kwargs: dict[str, Any] = {}
    if config.weight_decay is not None and WEIGHT_DECAY[config.optimizer] is not None:
        kwargs["weight_decay"] = config.weight_decay
    with console.status(f"finding a learning rate for {config.optimizer} ({finder.method})"):
        result = lr_find(
            OPTIMIZERS[config.optimizer], data, lr_min=finder.lr_min, lr_max=finder.lr_max,
            steps=finder.steps, method=finder.method, runs=finder.runs,
            batch_size=config.batch_size, model_fn=model_factory(config, data), seed=config.seed,
            l2=config.l2, smoothing=finder.smoothing, diverge=finder.diverge, **kwargs,
        )
    report = setup.report()
    table = Table(title=f"{config.optimizer}: learning-rate finder ({finder.method})",
                  title_justify="left")
    for name in ("lr", "loss", "smoothed"):
        table.add_column(name, justify="right")
    for i in sorted({int(i) for i in
                     [round(k * (len(result.lrs) - 1) / 8) for k in range(9)]}):
        table.add_row(f"{result.lrs[i]:.3g}", fmt(float(result.losses[i])),
                      fmt(float(result.smoothed[i])))
    console.print(table)
    stop = (f"diverged at lr {result.lrs[result.kept]:.3g}" if result.diverged
            else "no divergence up to --lr-max")
    console.print(f"suggested lr {result.suggestion:.3g} (steepest descent); min / 10 "
                  f"{result.min_over_10:.3g}; {stop}")
    summary = {
        "command": "lr-find",
        "optimizer": config.optimizer,
        "method": finder.method,
        "suggestion": result.suggestion,
        "steepest": result.steepest,
        "min_over_10": result.min_over_10,
        "diverged": result.diverged,
        "kept": result.kept,
        "lrs": result.lrs,
        "losses": result.losses,
        "smoothed": result.smoothed,
        **report,
    }
    title = f"{config.optimizer}, batch {config.batch_size}, {finder.method}"
    return finish(args, console, summary, lambda path: plot_lr_find(result, path, title))
