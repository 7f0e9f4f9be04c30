"""``jopt sweep``: many learning rates in one compiled, vmapped program."""

from __future__ import annotations

import argparse
from typing import Any

from jopt.cli.flags import UsageError, add_config, add_output, config_of, positive, typed
from jopt.cli.output import finish, fmt, make_console
from jopt.cli.setup import check_optimizer, load_data, start
from jopt.train.config import number

MAX_RUNS = 1 << 16


def add(sub: Any) -> None:
    p = sub.add_parser("sweep", help="train many learning rates at once (vmap, one compile)",
                       description="Train --runs learning rates, log-spaced, in one program.")
    p.add_argument("--lr-min", type=positive(float, "--lr-min"), default=1e-4,
                   help="smallest learning rate (default 1e-4)")
    p.add_argument("--lr-max", type=positive(float, "--lr-max"), default=1.0,
                   help="largest learning rate (default 1)")
    p.add_argument("--runs", type=typed(number(int, 0, True, maximum=MAX_RUNS), "--runs"),
                   default=256,
                   help=f"learning rates, log-spaced (default 256, at most {MAX_RUNS})")
    p.add_argument("--vary-seed", action="store_true",
                   help="give run k the seed --seed + k (default: all runs share --seed)")
    add_config(p, skip=["lr", "prune", "sparsity", "prune_schedule", "quantize"])
    add_output(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.lr_min > args.lr_max:
        raise UsageError(f"--lr-min {args.lr_min:g} is above --lr-max {args.lr_max:g}")
    config = config_of(args, lr=args.lr_min)
    if args.runs % config.devices:
        raise UsageError(
            f"--runs {args.runs} does not split over {config.devices} devices: use a multiple "
            f"of {config.devices}"
        )
    if config.fsdp:
        raise UsageError("--fsdp: a sweep splits its runs over the devices, each run whole")
    setup = start(args)
    data = load_data(config)
    check_optimizer(config)

    import numpy as np
    from rich.table import Table

    from jopt.train.data import num_batches
    from jopt.train.loops import sweep
    from jopt.train.recipes import OPTIMIZERS, make_lr_control
    from jopt.train.runner import model_factory, placement_of

    console = make_console(args)
    lrs = np.geomspace(args.lr_min, args.lr_max, args.runs)
    seeds = config.seed + np.arange(args.runs) if args.vary_seed else config.seed
    steps = num_batches(len(data.x_train), config.batch_size, config.drop_last)
    control = make_lr_control(config, steps)
    with console.status(f"training {args.runs} runs of {config.optimizer}"):
        result = sweep(
            OPTIMIZERS[config.optimizer],
            data,
            lrs,
            weight_decays=config.weight_decay,
            seeds=seeds,
            model_fn=model_factory(config, data),
            epochs=config.epochs,
            batch_size=config.batch_size,
            drop_last=config.drop_last,
            l2=config.l2,
            lr_control=control,
            placement=placement_of(config),
        )
    report = setup.report()
    acc = result.history["test_accuracy"][:, -1]
    loss = result.history["test_loss"][:, -1]
    best = result.best()
    table = Table(title=f"{config.optimizer}: {args.runs} learning rates, {config.epochs} epochs",
                  title_justify="left")
    for name in ("lr", "test loss", "test acc"):
        table.add_column(name, justify="right")
    for i in np.unique(np.linspace(0, args.runs - 1, min(args.runs, 9)).astype(int)):
        table.add_row(f"{lrs[i]:.3g}", fmt(float(loss[i])), f"{acc[i]:.3f}")
    console.print(table)
    runs_per_second = args.runs / result.train_seconds if result.train_seconds > 0 else None
    rate = f"{runs_per_second:.0f} runs/s" if runs_per_second is not None else "runs/s unmeasured"
    console.print(
        f"best lr {lrs[best]:.3g}: test accuracy {acc[best]:.3f}; {args.runs} runs in "
        f"{result.train_seconds:.3f} s ({rate}) after {report['compile_seconds']:.2f} s of "
        "compilation"
    )
    from jopt.train.plots import plot_sweep

    title = f"{config.optimizer}, {config.epochs} epochs, batch {config.batch_size}"
    summary = {
        "command": "sweep",
        "optimizer": config.optimizer,
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
    }
    return finish(args, console, summary, lambda path: plot_sweep(lrs, acc, loss, path, title))
