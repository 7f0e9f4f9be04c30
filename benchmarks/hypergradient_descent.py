"""Hypergradient descent on Iris: SGD-HD and Adam-HD started 10x below the tuned rate.

The default recipe of ``jopt.train`` (4-16-3 MLP, torch's initialisation, batches of 16, l2
1e-3, 100 epochs), over ``--seeds`` seeds (initialisation and shuffling), each contender's
seeds ``vmap``-ed in one compiled program by :func:`jopt.train.sweep`:

1. the tuned fixed rate: ``jopt.train.sweep`` over a log grid of rates (``--lr-min`` to
   ``--lr-max``, seed 0) and its best run (``SweepResult.best()``: final test accuracy, ties
   by test loss), what ``jopt sweep`` reports; this favours the fixed-rate baseline, which
   is tuned on the test set;
2. plain SGD / Adam at that rate, and at a tenth of it;
3. SGD-HD / Adam-HD (``jopt.sgd_hd``, ``jopt.adam_hd``) from a tenth of it. Their
   ``hypergrad_lr`` is chosen from a log grid (``--hypergrad-lrs``) by the mean final
   **training** loss over the same seeds (never the test set): all grid points times seeds
   are one ``vmap``-ed program (``hypergrad_lr`` is injected data), and the reported runs are
   those of the chosen value.

Reported per contender: final test accuracy and cross-entropy (mean and standard deviation
over seeds), final training loss, and for HD the highest and the final learning rate it
reached (the rate is the optimizer's state, read after every epoch; the epoch history's ``lr``
column shows only the injected initial rate). HD does not keep its rate positive: where the
hypergradient keeps pointing down late in a run, the rate crosses zero, and the table shows it.

Run: ``python benchmarks/hypergradient_descent.py`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import jopt  # noqa: E402
from jopt import train  # noqa: E402
from jopt.transforms.hypergradient import ScaleByHypergradientState  # noqa: E402

BATCH, L2, HIDDEN = 16, 1e-3, (16,)
PAIRS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "sgd": (jopt.sgd, jopt.sgd_hd),
    "adam": (jopt.adam, jopt.adam_hd),
}


def hd_lr(opt_state: Any) -> np.ndarray:
    """The learning rate hypergradient descent holds in ``opt_state`` (one per run)."""
    found = [
        s
        for s in jax.tree.leaves(
            opt_state, is_leaf=lambda x: isinstance(x, ScaleByHypergradientState)
        )
        if isinstance(s, ScaleByHypergradientState)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one hypergradient state, found {len(found)}")
    return np.asarray(found[0].lr, np.float64)


def tuned_lr(
    factory: Callable[..., Any], data: train.Dataset, lrs: np.ndarray, epochs: int
) -> dict[str, Any]:
    """The best run of a learning-rate sweep on seed 0, as ``jopt sweep`` picks it."""
    result = train.sweep(factory, data, lrs, epochs=epochs, batch_size=BATCH, l2=L2)
    best = result.best()
    return {
        "lrs": result.lrs.tolist(),
        "test_accuracy": result.history["test_accuracy"][:, -1].tolist(),
        "best": float(result.lrs[best]),
        "best_test_accuracy": float(result.history["test_accuracy"][best, -1]),
    }


def summary(history: dict[str, np.ndarray], rows: np.ndarray | slice = slice(None)) -> dict:
    """Mean and standard deviation over runs of the final epoch's metrics."""
    out: dict[str, Any] = {}
    for name in ("test_accuracy", "test_loss", "train_loss"):
        final = np.asarray(history[name][rows, -1], np.float64)
        out[name] = {"mean": float(final.mean()), "std": float(final.std()),
                     "runs": final.tolist()}
    return out


def fixed(
    factory: Callable[..., Any], data: train.Dataset, lr: float, seeds: np.ndarray, epochs: int
) -> dict[str, Any]:
    """``factory`` at a constant ``lr`` on every seed, one ``vmap``-ed program."""
    result = train.sweep(factory, data, np.full(len(seeds), lr), seeds=seeds, epochs=epochs,
                         batch_size=BATCH, l2=L2)
    return {"lr": lr, **summary(result.history)}


def hypergradient(
    factory: Callable[..., Any],
    data: train.Dataset,
    lr: float,
    hypergrad_lrs: np.ndarray,
    seeds: np.ndarray,
    epochs: int,
) -> dict[str, Any]:
    """``factory`` (an HD optimizer) from ``lr`` for every ``hypergrad_lr`` of the grid and every
    seed in one program; the grid point with the lowest mean final training loss is chosen."""
    grid = np.repeat(np.asarray(hypergrad_lrs, np.float32), len(seeds))
    run_seeds = np.tile(seeds, len(hypergrad_lrs))
    model_fn = train.MLPFactory(data.num_features, HIDDEN, data.num_classes)
    opt = jopt.inject_hyperparams(factory)(lr=lr, hypergrad_lr=float(grid[0]))
    trainer = train.Trainer(
        _graphdef(model_fn), opt, num_train=len(data.x_train), batch_size=BATCH, l2=L2
    )
    state = trainer.init_batched(trainer.params_of(model_fn, run_seeds), run_seeds,
                                 hypergrad_lr=grid)
    rates: list[np.ndarray] = []
    done = train.drive(trainer, state, data, epochs,
                       callbacks=[lambda e, m, s: rates.append(hd_lr(s.opt_state))])
    by_point = np.asarray(done.history["train_loss"][:, -1], np.float64).reshape(
        len(hypergrad_lrs), len(seeds)
    )
    mean_train = np.where(np.isfinite(by_point).all(1), by_point.mean(1), np.inf)
    pick = int(np.argmin(mean_train))
    rows = slice(pick * len(seeds), (pick + 1) * len(seeds))
    lr_path = np.stack(rates, -1)[rows]  # (seeds, epochs)
    return {
        "lr": lr,
        "hypergrad_lr": float(hypergrad_lrs[pick]),
        "hypergrad_lr_grid": [float(b) for b in hypergrad_lrs],
        "grid_mean_final_train_loss": mean_train.tolist(),
        "final_lr": {"mean": float(lr_path[:, -1].mean()), "std": float(lr_path[:, -1].std()),
                     "runs": lr_path[:, -1].tolist()},
        "peak_lr": {"mean": float(lr_path.max(1).mean()), "std": float(lr_path.max(1).std()),
                    "runs": lr_path.max(1).tolist()},
        "mean_lr_by_epoch": lr_path.mean(0).tolist(),
        **summary(done.history, rows),
    }


def _graphdef(model_fn: Callable[..., Any]) -> Any:
    from flax import nnx

    return nnx.graphdef(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))


def _rate(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3g} ± {stat['std']:.2g}"


def _pm(stat: dict[str, float], digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def rows_of(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The printed table's rows (also what ``run_all.py --summary`` prints)."""
    rows = []
    for name, rec in results.items():
        hd = "final_lr" in rec
        rows.append({
            "contender": name,
            "start lr": f"{rec['lr']:.3g}",
            "hypergrad_lr": f"{rec['hypergrad_lr']:.3g}" if hd else "-",
            "peak lr": _rate(rec["peak_lr"]) if hd else "-",
            "final lr": _rate(rec["final_lr"]) if hd else f"{rec['lr']:.3g}",
            "test acc": _pm(rec["test_accuracy"]),
            "test loss": _pm(rec["test_loss"]),
            "train loss": _pm(rec["train_loss"]),
        })
    return rows


COLUMNS = ["contender", "start lr", "hypergrad_lr", "peak lr", "final lr", "test acc",
           "test loss", "train loss"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default 100 (quick: 5)")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (quick: 2)")
    parser.add_argument("--lr-min", type=float, default=1e-4)
    parser.add_argument("--lr-max", type=float, default=1.0)
    parser.add_argument("--lr-runs", type=int, default=None, help="default 25 (quick: 5)")
    parser.add_argument("--hypergrad-lrs", default=None,
                        help="comma-separated grid (default 1e-5 .. 1e-1 by half decades)")
    parser.add_argument("--optimizers", default="sgd,adam")
    args = parser.parse_args(argv)
    epochs = args.epochs or (5 if args.quick else 100)
    seeds = np.arange(args.seeds or (2 if args.quick else 5), dtype=np.uint32)
    lr_runs = args.lr_runs or (5 if args.quick else 25)
    if args.hypergrad_lrs:
        betas = np.asarray([float(b) for b in args.hypergrad_lrs.split(",")])
    else:
        betas = np.geomspace(1e-5, 1e-1, 3 if args.quick else 9)
    info = common.machine()
    print(f"# Hypergradient descent on Iris, {epochs} epochs, {len(seeds)} seeds, "
          f"on {info['cpu']} ({info['cores']} cores)")
    data = train.load_iris()
    lrs = np.geomspace(args.lr_min, args.lr_max, lr_runs)
    tuning: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in args.optimizers.split(","):
        plain, hd = PAIRS[name]
        tuning[name] = tuned_lr(plain, data, lrs, epochs)
        best = tuning[name]["best"]
        small = best / 10
        print(f"# {name}: tuned lr {best:.3g} (test accuracy "
              f"{tuning[name]['best_test_accuracy']:.3f} on seed 0); starting HD from {small:.3g}",
              flush=True)
        results[f"{name}, tuned lr"] = fixed(plain, data, best, seeds, epochs)
        results[f"{name}, lr / 10"] = fixed(plain, data, small, seeds, epochs)
        results[f"{name}_hd, from lr / 10"] = hypergradient(hd, data, small, betas, seeds, epochs)
    print(common.table(rows_of(results), COLUMNS))
    payload = {
        "machine": info,
        "epochs": epochs,
        "seeds": seeds.tolist(),
        "batch_size": BATCH,
        "l2": L2,
        "tuning": tuning,
        "results": results,
    }
    if not args.no_json:
        print("wrote", common.write_json("hypergradient_descent", payload, args.out))
    return payload


if __name__ == "__main__":
    main()
