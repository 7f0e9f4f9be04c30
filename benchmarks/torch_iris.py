"""The default recipe of ``jopt train`` as a plain PyTorch script: Iris, 4-16-3 MLP, Adam.

Same data (the CSV shipped in ``jopt/data``, split stratified by class with NumPy's generator
and standardized on the training rows, as :func:`jopt.train.load_iris` does), same model
(``nn.Linear`` default init, ReLU), same loss (cross-entropy + ``l2 / 2 * |W|^2`` on the weight
matrices), same schedule of work: every epoch shuffles, steps through batches of 16 and
evaluates on the test set. It imports torch and NumPy only, so its process time is what a
torch user pays.

``--runs K`` trains K learning rates log-spaced in ``[--lr-min, --lr-max]`` one after another
(what ``jopt sweep`` does in one program). The last line of stdout is a JSON object.

Run: ``python benchmarks/torch_iris.py`` or ``python benchmarks/torch_iris.py --runs 16``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CSV = Path(__file__).resolve().parents[1] / "jopt" / "data" / "iris.csv"


def load_iris(
    test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): jopt's stratified split, standardized."""
    with CSV.open(encoding="utf-8") as f:
        rows = [r for r in csv.reader(f)][1:]
    rows = [r for r in rows if r]
    classes = sorted({r[-1] for r in rows})
    x = np.asarray([[float(v) for v in r[:-1]] for r in rows], dtype=np.float32)
    y = np.asarray([classes.index(r[-1]) for r in rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    test = []
    for c in range(len(classes)):
        members = np.flatnonzero(y == c)
        test.append(rng.permutation(members)[: round(test_size * len(members))])
    test_rows = np.sort(np.concatenate(test))
    train_rows = np.setdiff1d(np.arange(len(y)), test_rows)
    train_rows = train_rows[rng.permutation(len(train_rows))]
    x_train, y_train, x_test, y_test = x[train_rows], y[train_rows], x[test_rows], y[test_rows]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return (
        ((x_train - mean) / std).astype(np.float32),
        y_train,
        ((x_test - mean) / std).astype(np.float32),
        y_test,
    )


def train(
    data: tuple[torch.Tensor, ...],
    lr: float = 0.01,
    epochs: int = 100,
    batch_size: int = 16,
    l2: float = 1e-3,
    seed: int = 0,
    hidden: int = 16,
) -> dict[str, Any]:
    """One run; returns the final test accuracy, the last epoch's train loss and the seconds."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(x_train.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, int(y_train.max()) + 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    loss_fn = nn.CrossEntropyLoss()
    n = len(x_train)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    accuracy = train_loss = None
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        losses = []
        model.train()
        for i in range(0, n, batch_size):
            rows = order[i : i + batch_size]
            x, y = x_train[rows], y_train[rows]
            opt.zero_grad()
            loss = loss_fn(model(x), y) + l2 * 0.5 * sum((w * w).sum() for w in weights)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(-1) == y_test).float().mean()
        train_loss = torch.stack(losses).mean()
    seconds = time.perf_counter() - start
    return {
        "test_accuracy": float(accuracy),
        "train_loss": float(train_loss),
        "seconds": seconds,
        "steps": epochs * -(-n // batch_size),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1, help="K learning rates, one after another")
    parser.add_argument("--lr-min", type=float, default=1e-4)
    parser.add_argument("--lr-max", type=float, default=1.0)
    args = parser.parse_args(argv)
    arrays = load_iris()
    data = tuple(torch.from_numpy(a) for a in arrays)
    lrs = [args.lr] if args.runs == 1 else list(np.geomspace(args.lr_min, args.lr_max, args.runs))
    start = time.perf_counter()
    results = [
        train(data, float(lr), args.epochs, args.batch_size, args.l2, args.seed) for lr in lrs
    ]
    seconds = time.perf_counter() - start
    summary = {
        "runs": len(lrs),
        "seconds": seconds,
        "runs_per_second": len(lrs) / seconds,
        "steps_per_run": results[0]["steps"],
        "us_per_step": 1e6 * seconds / (len(lrs) * results[0]["steps"]),
        "test_accuracy": [r["test_accuracy"] for r in results],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
