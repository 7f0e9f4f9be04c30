"""Iris, split and standardized, and a DataLoader whose batches come from ``jax.random``.

``load_iris`` reads the 150-row UCI table shipped in the package, splits it stratified by class
and standardizes it with the training rows' statistics only (the test rows never leak into the
preprocessing). ``batch_indices`` is the one definition of an epoch's batches: a seeded
permutation cut into ``batch_size`` pieces, the short last batch padded and masked out. It is
pure and jittable, so a compiled train loop shuffles inside XLA; ``DataLoader`` iterates the
same batches eagerly, the way ``torch.utils.data.DataLoader`` does.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DataLoader",
    "Dataset",
    "batch_indices",
    "epoch_key",
    "load_iris",
    "num_batches",
    "permutation",
    "shuffle_key",
]


class Dataset(NamedTuple):
    """A train/test split as arrays: features ``float32 (n, d)``, labels ``int32 (n,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names) or int(max(self.y_train.max(), self.y_test.max())) + 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four arrays, the part of a dataset a compiled function takes."""
        return self.x_train, self.y_train, self.x_test, self.y_test


def _read_iris() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    text = resources.files("jopt").joinpath("data/iris.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], [r for r in rows[1:] if r]
    classes = tuple(sorted({r[-1] for r in body}))
    x = np.asarray([[float(v) for v in r[:-1]] for r in body], dtype=np.float32)
    y = np.asarray([classes.index(r[-1]) for r in body], dtype=np.int32)
    return x, y, tuple(header[:-1]), classes


def load_iris(test_size: float = 0.2, seed: int = 0, standardize: bool = True) -> Dataset:
    """Iris split stratified by class into train and test, standardized on the train rows.

    Each class contributes ``round(test_size * class_count)`` rows to the test set, chosen by a
    NumPy generator seeded with ``seed``, so every class keeps its proportion (10 per class with
    the default 0.2). With ``standardize`` both sets are shifted and scaled by the training
    set's mean and standard deviation.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    x, y, features, classes = _read_iris()
    rng = np.random.default_rng(seed)
    test = []
    for c in range(len(classes)):
        rows = np.flatnonzero(y == c)
        k = round(test_size * len(rows))
        if not 0 < k < len(rows):
            raise ValueError(f"test_size={test_size} leaves class {classes[c]!r} without rows")
        test.append(rng.permutation(rows)[:k])
    test_rows = np.sort(np.concatenate(test))
    train_rows = np.setdiff1d(np.arange(len(y)), test_rows)
    # Interleave the classes so an unshuffled loader still sees all of them in each batch.
    train_rows = train_rows[rng.permutation(len(train_rows))]
    x_train, y_train, x_test, y_test = x[train_rows], y[train_rows], x[test_rows], y[test_rows]
    if standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    return Dataset(
        x_train.astype(np.float32),
        y_train,
        x_test.astype(np.float32),
        y_test,
        features,
        classes,
    )


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches an epoch over ``n`` rows has, as ``len(DataLoader)`` in torch."""
    if batch_size < 1:
        raise ValueError(f"batch_size should be a positive integer value, but got {batch_size}")
    count = n // batch_size if drop_last else math.ceil(n / batch_size)
    if count == 0:
        raise ValueError(f"batch_size {batch_size} with drop_last leaves no batch of {n} rows")
    return count


DATA_STREAM = 0x6A6F7074
"""Folded into a run's seed for its shuffling key, apart from the model's initialisation."""


def shuffle_key(seed: int | jax.Array) -> jax.Array:
    """The shuffling key of a run with ``seed`` (a typed key; traceable)."""
    return jax.random.fold_in(jax.random.key(seed), DATA_STREAM)


def epoch_key(key: jax.Array, epoch: jax.Array | int) -> jax.Array:
    """The shuffling key of one epoch: a function of the run's key and the epoch number only.

    Resuming at epoch ``e`` therefore shuffles exactly as the uninterrupted run did.
    """
    return jax.random.fold_in(key, epoch)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of ``range(n)``, ``int32``, drawn from ``key``.

    For ``n <= 1024`` it sorts ``n`` random 32-bit words whose low 10 bits are replaced by the
    row index: one sort of plain integers, which XLA:CPU runs several times faster than the
    comparator sort behind ``argsort`` (and than ``jax.random.permutation``), and which makes
    every word distinct. Rows whose 22 random high bits tie keep their order (for 120 rows, a
    tie happens once in about 600 epochs). Larger ``n`` uses ``jax.random.permutation``.
    """
    if n > 1024:
        return jax.random.permutation(key, n).astype(jnp.int32)
    words = jax.random.bits(key, (n,), jnp.uint32)
    low = jnp.uint32(1023)
    keyed = (words & ~low) | jnp.arange(n, dtype=jnp.uint32)
    return (jnp.sort(keyed) & low).astype(jnp.int32)


def batch_indices(
    key: jax.Array, n: int, batch_size: int, shuffle: bool = True, drop_last: bool = False
) -> tuple[jax.Array, jax.Array]:
    """One epoch's batches as row indices ``int32 (batches, batch_size)`` and a mask.

    The rows are a permutation of ``range(n)`` drawn from ``key`` (or in order without
    ``shuffle``). Without ``drop_last`` the short last batch is padded with row 0 and the
    mask is 0 there, so a masked mean over a batch is torch's mean over the smaller batch.
    """
    count = num_batches(n, batch_size, drop_last)
    order = permutation(key, n) if shuffle else jnp.arange(n, dtype=jnp.int32)
    total = count * batch_size
    if total <= n:
        idx, mask = order[:total], jnp.ones(total, jnp.float32)
    else:
        pad = total - n
        idx = jnp.concatenate([order, jnp.zeros(pad, jnp.int32)])
        mask = jnp.concatenate([jnp.ones(n, jnp.float32), jnp.zeros(pad, jnp.float32)])
    return idx.reshape(count, batch_size), mask.reshape(count, batch_size)


class DataLoader:
    """Batches of ``(x, y)`` like ``torch.utils.data.DataLoader(TensorDataset(x, y), ...)``.

    Epoch ``e`` (counting iterations of the loader from 0) is shuffled with
    ``epoch_key(shuffle_key(seed), e)`` through :func:`batch_indices`, the same batches the
    compiled train loop of :mod:`jopt.train.steps` draws for that epoch.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = np.asarray(x), np.asarray(y)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.key = shuffle_key(seed)
        self.epoch = 0
        num_batches(len(self.x), batch_size, drop_last)  # validate now

    def __len__(self) -> int:
        return num_batches(len(self.x), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        idx, mask = batch_indices(
            epoch_key(self.key, self.epoch),
            len(self.x),
            self.batch_size,
            self.shuffle,
            self.drop_last,
        )
        self.epoch += 1
        idx, mask = np.asarray(idx), np.asarray(mask).astype(bool)
        for rows, keep in zip(idx, mask):
            rows = rows[keep]
            yield self.x[rows], self.y[rows]
