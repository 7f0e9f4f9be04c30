"""Iris loading, the stratified split, standardization, and the batching of an epoch."""

import jax
import numpy as np
import pytest

from jopt.train.data import (
    DataLoader,
    _read_iris,
    batch_indices,
    load_iris,
    num_batches,
    permutation,
)


def test_iris_split_is_stratified_and_disjoint():
    data = load_iris()
    assert data.x_train.shape == (120, 4) and data.x_test.shape == (30, 4)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert data.class_names == ("Iris-setosa", "Iris-versicolor", "Iris-virginica")
    assert np.bincount(data.y_test).tolist() == [10, 10, 10]
    assert np.bincount(data.y_train).tolist() == [40, 40, 40]
    raw = load_iris(standardize=False)
    table, _, _, _ = _read_iris()
    both = np.concatenate([raw.x_train, raw.x_test])
    # Every row of the table lands in exactly one of the two sets.
    np.testing.assert_array_equal(both[np.lexsort(both.T)], table[np.lexsort(table.T)])


def test_standardized_with_training_statistics_only():
    raw, data = load_iris(standardize=False), load_iris()
    mean, std = raw.x_train.mean(0), raw.x_train.std(0)
    np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(data.x_test, (raw.x_test - mean) / std, rtol=1e-5, atol=1e-5)
    assert np.abs(data.x_test.mean(0)).max() > 1e-3  # the test rows were not used


def test_split_depends_on_seed_only():
    a, b, c = load_iris(seed=0), load_iris(seed=0), load_iris(seed=1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    assert load_iris(test_size=0.5).x_test.shape == (75, 4)
    with pytest.raises(ValueError):
        load_iris(test_size=1.0)


@pytest.mark.parametrize(
    "batch_size, drop_last, batches, last",
    [
        (120, False, 1, 120),
        (16, False, 8, 8),
        (16, True, 7, 16),
        (1, False, 120, 1),
        (7, False, 18, 1),
    ],
)
def test_batches_cover_the_epoch(batch_size, drop_last, batches, last):
    key = jax.random.key(3)
    idx, mask = batch_indices(key, 120, batch_size, shuffle=True, drop_last=drop_last)
    assert idx.shape == (batches, batch_size) and mask.shape == idx.shape
    assert num_batches(120, batch_size, drop_last) == batches
    rows = np.asarray(idx)[np.asarray(mask) == 1]
    assert int(np.asarray(mask)[-1].sum()) == last
    assert len(set(rows.tolist())) == len(rows)  # no row twice
    if not drop_last:
        assert sorted(rows.tolist()) == list(range(120))


def test_shuffle_differs_by_epoch_and_is_off_without_shuffle():
    key = jax.random.key(0)
    a, _ = batch_indices(jax.random.fold_in(key, 0), 120, 16)
    b, _ = batch_indices(jax.random.fold_in(key, 1), 120, 16)
    assert not np.array_equal(a, b)
    ordered, _ = batch_indices(key, 120, 16, shuffle=False)
    assert np.asarray(ordered).reshape(-1)[:120].tolist() == list(range(120))


@pytest.mark.parametrize("n", [1, 2, 120, 1024, 1500])
def test_permutation_is_a_permutation(n):
    perm = np.asarray(permutation(jax.random.key(7), n))
    assert sorted(perm.tolist()) == list(range(n))


def test_permutation_is_roughly_uniform():
    # Each of 5 rows lands in each position about 1/5 of the time.
    keys = jax.random.split(jax.random.key(1), 4000)
    perms = np.asarray(jax.vmap(lambda k: permutation(k, 5))(keys))
    counts = np.stack([(perms == r).sum(0) for r in range(5)])
    assert np.all(np.abs(counts / 4000 - 0.2) < 0.035)


def test_dataloader_matches_torch_semantics():
    data = load_iris()
    loader = DataLoader(data.x_train, data.y_train, batch_size=16, shuffle=True, seed=0)
    assert len(loader) == 8
    first = list(loader)
    second = list(loader)
    assert [len(x) for x, _ in first] == [16] * 7 + [8]
    seen = np.concatenate([y for _, y in first])
    assert np.bincount(seen).tolist() == [40, 40, 40]
    assert not np.array_equal(first[0][0], second[0][0])  # a new order each epoch
    ordered = DataLoader(data.x_train, data.y_train, batch_size=50, drop_last=True)
    batches = list(ordered)
    assert len(batches) == 2 and np.array_equal(batches[0][0], data.x_train[:50])
    with pytest.raises(ValueError):
        DataLoader(data.x_train, data.y_train, batch_size=0)
