"""``jopt sweep``: many learning rates in one compiled, vmapped program."""

from __future__ import annotations

import argparse
from typing import Any

from jopt.cli.flags import UsageError, add_config, add_output, config_of, positive, typed
from jopt.cli.output import finish, fmt, make_console
from jopt.cli.setup import check_optimizer, load_data, start
from jopt.train.config import number

MAX_RUNS = 1 << 16
QUANTIZE_HELP = (
    "after training, quantize the best run's Linear layers as torch's quantize_dynamic: int8 or "
    "none; its bytes and test accuracy are reported (only the best run's: quantizing each of "
    f"up to {MAX_RUNS} runs would cost more than the sweep)"
)


def add(sub: Any) -> None:
    p = sub.add_parser("sweep", help="train many learning rates at once (vmap, one compile)",
                       description="Train --runs learning rates, log-spaced, in one program. "
                                   "With --prune, each run prunes its own weights (its mask is "
                                   "part of its optimizer state).")
    p.add_argument("--lr-min", type=positive(float, "--lr-min"), default=1e-4,
                   help="smallest learning rate (default 1e-4)")
    p.add_argument("--lr-max", type=positive(float, "--lr-max"), default=1.0,
                   help="largest learning rate (default 1)")
    p.add_argument("--runs", type=typed(number(int, 0, True, maximum=MAX_RUNS), "--runs"),
                   default=256,
                   help=f"learning rates, log-spaced (default 256, at most {MAX_RUNS})")
    p.add_argument("--vary-seed", action="store_true",
                   help="give run k the seed --seed + k (default: all runs share --seed)")
    add_config(p, skip=["lr"], helps={"quantize": QUANTIZE_HELP})
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

    import jax
    import numpy as np
    from rich.table import Table

    from jopt.train.compress import compression_report, dense_epochs, make_pruning, sparsities
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
            pruning=make_pruning(config, steps),
        )
    report = setup.report()
    acc = result.history["test_accuracy"][:, -1]
    loss = result.history["test_loss"][:, -1]
    best = result.best()
    pruned = config.prune != "none"
    params = _whole(result.state.params)
    sparsity = sparsities(params)
    dense = dense_epochs(config)
    before = result.history["test_accuracy"][:, dense - 1] if dense else None
    best_params = jax.tree.map(lambda x: x[best], params)
    compression = compression_report(result.graphdef, best_params, data, config.quantize,
                                     None if before is None else float(before[best]))
    table = Table(title=f"{config.optimizer}: {args.runs} learning rates, {config.epochs} epochs",
                  title_justify="left")
    columns = ["lr", "test loss", "test acc"]
    if pruned:
        columns += ["weights pruned"] + (["acc before pruning"] if before is not None else [])
    for name in columns:
        table.add_column(name, justify="right")
    for i in np.unique(np.linspace(0, args.runs - 1, min(args.runs, 9)).astype(int)):
        row = [f"{lrs[i]:.3g}", fmt(float(loss[i])), f"{acc[i]:.3f}"]
        if pruned:
            row += [f"{sparsity[i]:.1%}"] + ([f"{before[i]:.3f}"] if before is not None else [])
        table.add_row(*row)
    console.print(table)
    if pruned or config.quantize != "none":
        from jopt.cli.train import compression_table

        best_table = compression_table(compression, config)
        best_table.title = f"compression of the best run (lr {lrs[best]:.3g})"
        console.print(best_table)
    runs_per_second = args.runs / result.train_seconds if result.train_seconds > 0 else None
    rate = f"{runs_per_second:.0f} runs/s" if runs_per_second is not None else "runs/s unmeasured"
    console.print(
        f"best lr {lrs[best]:.3g}: test accuracy {acc[best]:.3f}"
        + (f", {sparsity[best]:.1%} of the weights pruned" if pruned else "")
        + (f", {config.quantize} test accuracy {compression['quantized_test_accuracy']:.3f}"
           if config.quantize != "none" else "")
        + f"; {args.runs} runs in {result.train_seconds:.3f} s ({rate}) after "
        f"{report['compile_seconds']:.2f} s of compilation"
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
        "best_sparsity": float(sparsity[best]),
        "prune": config.prune,
        "target_sparsity": config.resolved().sparsity,
        "prune_schedule": config.prune_schedule if pruned else None,
        "quantize": config.quantize,
        "lrs": lrs.tolist(),
        "test_accuracy": acc.tolist(),
        "test_loss": loss.tolist(),
        "sparsity": sparsity.tolist(),
        "dense_test_accuracy": None if before is None else before.tolist(),
        "best_compression": compression,
    }
    return finish(args, console, summary, lambda path: plot_sweep(lrs, acc, loss, path, title))


def _whole(params: Any) -> Any:
    """The runs' parameters whole on this process: with several processes the runs are split
    over them, and the report measures every run and evaluates the best one here."""
    import jax

    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)
