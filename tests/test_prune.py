"""jopt.prune against torch.nn.utils.prune on the same weights: every deterministic method,
fractions and counts, repeated pruning (torch's PruningContainer), global pruning over several
tensors, torch's errors; random methods by their counts and constraints; ties documented.

The weights are tie-free (distinct magnitudes, and channel norms apart by more than float32's
rounding), except in the one test about ties.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jopt.prune as jp
from jopt.train import MLP

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch")
P = pytest.importorskip("torch.nn.utils.prune")

NORMS = (1, 2, 3, math.inf, -math.inf, "fro")


def _norms(w: np.ndarray, n, axis: int) -> np.ndarray:
    others = tuple(i for i in range(w.ndim) if i != axis)
    a = np.abs(w.astype(np.float64))
    if n in (math.inf, -math.inf):
        return (np.max if n > 0 else np.min)(a, axis=others)
    n = 2 if n == "fro" else n
    return np.sum(a**n, axis=others) ** (1 / n)


def tie_free(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Weights whose magnitudes, and channel norms along every axis, differ by at least 1e-4
    relative: no ranking depends on rounding or on how ties are broken."""
    rng = np.random.default_rng(seed)
    w = (rng.permutation(math.prod(shape)) + 1.0) / math.prod(shape)
    w = (w * rng.choice([-1.0, 1.0], w.shape)).reshape(shape).astype(np.float32)

    def apart(values: np.ndarray) -> bool:
        v = np.sort(np.ravel(values))
        return bool(np.all(np.diff(v) > 1e-4 * np.maximum(np.abs(v[1:]), 1e-12)))

    assert apart(np.abs(w))
    for axis in range(w.ndim if w.ndim > 1 else 0):
        for n in NORMS:
            assert apart(_norms(w, n, axis)), (shape, seed, axis, n)
    return w


def torch_module(w: np.ndarray):
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.tensor(w))
    return module


def torch_mask(module) -> np.ndarray:
    return module.weight_mask.detach().numpy().astype(bool)


SHAPE_SEEDS = [((6, 10), 0), ((4, 3, 5), 1)]


# --------------------------------------------------------------------------------------------
# One method at a time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,seed", SHAPE_SEEDS)
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.55, 1.0, 0, 7, 60])
def test_l1_unstructured_matches_torch(shape, seed, amount):
    w = tie_free(shape, seed)
    module = torch_module(w)
    P.l1_unstructured(module, "weight", amount)
    mask = jp.l1_unstructured(w, amount)
    assert mask.dtype == jnp.bool_ and mask.shape == w.shape
    np.testing.assert_array_equal(np.asarray(mask), torch_mask(module))


@pytest.mark.parametrize("shape,seed", SHAPE_SEEDS)
@pytest.mark.parametrize("n", NORMS)
@pytest.mark.parametrize("amount", [0.34, 1.0, 2, *(pytest.param(a, marks=pytest.mark.slow)
                                                   for a in (0.0, 0.5, 1))])
def test_ln_structured_matches_torch(shape, seed, n, amount):
    w = tie_free(shape, seed)
    for dim in range(-w.ndim, w.ndim):
        if isinstance(amount, int) and amount > w.shape[dim]:
            continue
        module = torch_module(w)
        P.ln_structured(module, "weight", amount, n=n, dim=dim)
        mask = jp.ln_structured(w, amount, n, dim)
        np.testing.assert_array_equal(np.asarray(mask), torch_mask(module), err_msg=f"dim {dim}")


def test_ln_structured_nuclear_norm_matches_torch():
    w = tie_free((4, 3, 5), 1)
    scores = [np.linalg.norm(w[:, :, c].astype(np.float64), "nuc") for c in range(5)]
    assert np.min(np.diff(np.sort(scores))) > 1e-3
    module = torch_module(w)
    P.ln_structured(module, "weight", 2, n="nuc", dim=2)
    np.testing.assert_array_equal(np.asarray(jp.ln_structured(w, 2, "nuc", 2)),
                                  torch_mask(module))


def test_identity_matches_torch():
    w = tie_free((6, 10), 0)
    module = torch_module(w)
    P.identity(module, "weight")
    np.testing.assert_array_equal(np.asarray(jp.identity(w)), torch_mask(module))
    P.l1_unstructured(module, "weight", 0.5)
    P.identity(module, "weight")
    mask = jp.identity(w, mask=jp.l1_unstructured(w, 0.5))
    np.testing.assert_array_equal(np.asarray(mask), torch_mask(module))


def test_importance_scores_match_torch():
    w, scores = tie_free((6, 10), 0), tie_free((6, 10), 2)
    module = torch_module(w)
    P.l1_unstructured(module, "weight", 0.4, importance_scores=torch.tensor(scores))
    P.ln_structured(module, "weight", 0.5, n=2, dim=1, importance_scores=torch.tensor(scores))
    mask = jp.l1_unstructured(w, 0.4, importance_scores=scores)
    mask = jp.ln_structured(w, 0.5, 2, 1, mask=mask, importance_scores=scores)
    np.testing.assert_array_equal(np.asarray(mask), torch_mask(module))


# --------------------------------------------------------------------------------------------
# Repeated pruning: torch's PruningContainer
# --------------------------------------------------------------------------------------------

SEQUENCES = [
    [("l1_unstructured", dict(amount=0.3)), ("l1_unstructured", dict(amount=0.3))],
    [("l1_unstructured", dict(amount=5)), ("l1_unstructured", dict(amount=0.5)),
     ("l1_unstructured", dict(amount=20))],
    [("ln_structured", dict(amount=0.3, n=2, dim=0)), ("l1_unstructured", dict(amount=0.25))],
    [("l1_unstructured", dict(amount=0.6)), ("ln_structured", dict(amount=0.5, n=1, dim=-1)),
     ("ln_structured", dict(amount=1, n=math.inf, dim=0))],
    [("ln_structured", dict(amount=2, n=2, dim=1)), ("ln_structured", dict(amount=0.5, n=2, dim=1)),
     ("identity", {}), ("l1_unstructured", dict(amount=0.9))],
]


def _jopt_step(w, name, kwargs, mask):
    if name == "ln_structured":
        return jp.ln_structured(w, kwargs["amount"], kwargs["n"], kwargs["dim"], mask=mask)
    return getattr(jp, name)(w, **kwargs, mask=mask)


@pytest.mark.parametrize("sequence", SEQUENCES, ids=lambda s: "+".join(n for n, _ in s))
def test_repeated_pruning_composes_as_torch(sequence):
    w = tie_free((6, 10), 0)
    module, mask = torch_module(w), None
    for name, kwargs in sequence:
        getattr(P, name)(module, "weight", **kwargs)
        mask = _jopt_step(w, name, kwargs, mask)
        np.testing.assert_array_equal(np.asarray(mask), torch_mask(module), err_msg=name)
    # The pruned weights are torch's weight (orig * mask), bitwise.
    np.testing.assert_array_equal(np.asarray(jp.apply_mask(w, mask)),
                                  module.weight.detach().numpy())


# --------------------------------------------------------------------------------------------
# Global pruning over several tensors
# --------------------------------------------------------------------------------------------


def _global_weights():
    # Distinct magnitudes across all three tensors: one permutation split in three.
    flat = tie_free((5 * 4 + 4 * 3 + 3 * 6,), 3)
    return {"a": flat[:20].reshape(5, 4), "b": flat[20:32].reshape(4, 3),
            "c": flat[32:].reshape(3, 6)}


@pytest.mark.parametrize("amounts", [[0.5], [10], [0.2, 0.5], [7, 0.3, 11], [0.0, 1.0]])
def test_global_unstructured_matches_torch(amounts):
    weights = _global_weights()
    modules = {k: torch_module(v) for k, v in weights.items()}
    masks = None
    for amount in amounts:
        P.global_unstructured([(m, "weight") for m in modules.values()],
                              pruning_method=P.L1Unstructured, amount=amount)
        masks = jp.global_unstructured(weights, "l1", amount=amount, mask=masks)
        for k, m in modules.items():
            np.testing.assert_array_equal(np.asarray(masks[k]), torch_mask(m), err_msg=k)
    # Global pruning did prune unequally: the count is over all entries together.
    total = sum(v.size for v in weights.values())
    expected = sum(int((~torch_mask(m)).sum()) for m in modules.values())
    assert sum(int((~np.asarray(m)).sum()) for m in masks.values()) == expected <= total


def test_global_after_per_tensor_pruning_matches_torch():
    weights = _global_weights()
    modules = {k: torch_module(v) for k, v in weights.items()}
    P.ln_structured(modules["a"], "weight", 1, n=2, dim=0)
    masks = {k: jp.ones_like(v) for k, v in weights.items()}
    masks["a"] = jp.ln_structured(weights["a"], 1, 2, 0)
    P.global_unstructured([(m, "weight") for m in modules.values()],
                          pruning_method=P.L1Unstructured, amount=0.4)
    masks = jp.global_unstructured(weights, jp.l1_unstructured, amount=0.4, mask=masks)
    for k, m in modules.items():
        np.testing.assert_array_equal(np.asarray(masks[k]), torch_mask(m), err_msg=k)


def test_global_where_selects_leaves():
    weights = {**_global_weights(), "bias": np.ones(6, np.float32) * 1e-6}
    masks = jp.global_unstructured(weights, "l1", amount=0.5, where=jp.matrices)
    assert bool(jnp.all(masks["bias"]))  # not a matrix: never pruned, tiny as it is
    without = {k: v for k, v in weights.items() if k != "bias"}
    reference = jp.global_unstructured(without, "l1", amount=0.5)
    for k in without:
        np.testing.assert_array_equal(np.asarray(masks[k]), np.asarray(reference[k]))


# --------------------------------------------------------------------------------------------
# torch's checks, in torch's words
# --------------------------------------------------------------------------------------------


def _torch_error(fn):
    with pytest.raises(Exception) as info:
        fn()
    # torch prints shapes as torch.Size([6, 10]); jopt as (6, 10).
    text = re.sub(r"torch\.Size\(\[([^\]]*)\]\)",
                  lambda m: str(tuple(int(x) for x in m.group(1).split(",") if x.strip())),
                  str(info.value))
    return info.type, text


@pytest.mark.parametrize("call", [
    ("l1_unstructured", dict(amount=-1)),
    ("l1_unstructured", dict(amount=1.5)),
    ("l1_unstructured", dict(amount=-0.1)),
    ("l1_unstructured", dict(amount="half")),
    ("l1_unstructured", dict(amount=61)),
    ("random_unstructured", dict(amount=2.0)),
    ("ln_structured", dict(amount=0.5, n=2, dim=2)),
    ("ln_structured", dict(amount=7, n=2, dim=0)),
    ("ln_structured", dict(amount=-3, n=2, dim=0)),
    ("random_structured", dict(amount=11, dim=1)),
    ("ln_structured", dict(amount=0.5, n=2, dim=0), "bias"),
    ("random_structured", dict(amount=0.5, dim=0), "bias"),
], ids=lambda c: f"{c[0]}-{c[1]}-{c[2] if len(c) > 2 else 'weight'}")
def test_errors_are_torchs(call):
    name, kwargs, *which = call
    which = which[0] if which else "weight"
    w = tie_free((6, 10), 0) if which == "weight" else np.arange(1.0, 7.0, dtype=np.float32)
    module = torch_module(w)
    kind, message = _torch_error(lambda: getattr(P, name)(module, "weight", **kwargs))
    if name == "ln_structured":
        fn = lambda: jp.ln_structured(w, kwargs["amount"], kwargs["n"], kwargs["dim"])  # noqa
    elif name.startswith("random"):
        fn = lambda: getattr(jp, name)(w, **kwargs, key=jax.random.key(0))  # noqa
    else:
        fn = lambda: getattr(jp, name)(w, **kwargs)  # noqa
    with pytest.raises(kind) as info:
        fn()
    assert str(info.value) == message


def test_integer_amount_checked_against_the_entries_left():
    w = tie_free((6, 10), 0)
    module = torch_module(w)
    P.l1_unstructured(module, "weight", 50)
    kind, message = _torch_error(lambda: P.l1_unstructured(module, "weight", 11))
    with pytest.raises(kind, match=re.escape(message)):
        jp.l1_unstructured(w, 11, mask=jp.l1_unstructured(w, 50))


def test_global_refuses_structured_methods():
    with pytest.raises(TypeError, match='Only "unstructured" PRUNING_TYPE supported'):
        jp.global_unstructured(_global_weights(), jp.ln_structured, amount=0.5)


# --------------------------------------------------------------------------------------------
# Random methods: torch's distribution, JAX's generator
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.3, 7])
def test_random_unstructured_counts_and_respects_the_mask(amount):
    w = tie_free((6, 10), 0)
    module = torch_module(w)
    P.random_unstructured(module, "weight", 0.5)
    P.random_unstructured(module, "weight", amount)
    torch_pruned = int((~torch_mask(module)).sum())
    first = jp.random_unstructured(w, 0.5, key=jax.random.key(0))
    second = jp.random_unstructured(w, amount, key=jax.random.key(1), mask=first)
    assert int(jnp.sum(~second)) == torch_pruned  # the same counts as torch
    assert not bool(jnp.any(second & ~first))  # nothing pruned comes back
    again = jp.random_unstructured(w, amount, key=jax.random.key(1), mask=first)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(second))


def test_random_unstructured_is_uniform():
    w = np.ones((4, 5), np.float32)
    draw = jax.jit(jax.vmap(lambda k: jp.random_unstructured(w, 5, key=k)))
    masks = np.asarray(draw(jax.random.split(jax.random.key(0), 4000)))
    assert (masks.reshape(4000, -1).sum(axis=1) == 15).all()
    rate = 1 - masks.mean(axis=0)  # each entry pruned with probability 5/20
    assert np.abs(rate - 0.25).max() < 0.04  # 5.9 standard deviations of a 4000-draw mean


def test_random_structured_counts_channels_as_torch():
    w = tie_free((4, 3, 5), 1)
    module = torch_module(w)
    P.l1_unstructured(module, "weight", 0.2)
    P.random_structured(module, "weight", 0.5, dim=2)
    first = jp.l1_unstructured(w, 0.2)
    mask = jp.random_structured(w, 0.5, 2, key=jax.random.key(3), mask=first)
    alive = lambda m: int(np.any(np.asarray(m), axis=(0, 1)).sum())  # noqa: E731
    assert alive(mask) == alive(torch_mask(module)) < 5
    assert not bool(jnp.any(mask & ~first))
    kept = np.any(np.asarray(mask), axis=(0, 1))
    np.testing.assert_array_equal(np.asarray(mask)[..., kept], np.asarray(first)[..., kept])


# --------------------------------------------------------------------------------------------
# Pytrees, nnx modules, jit, ties
# --------------------------------------------------------------------------------------------


def test_pytree_prunes_each_leaf_on_its_own():
    tree = {"a": tie_free((6, 10), 0), "b": [tie_free((4, 3, 5), 1)]}
    masks = jp.l1_unstructured(tree, 0.5)
    for leaf, mask in zip(jax.tree.leaves(tree), jax.tree.leaves(masks)):
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(jp.l1_unstructured(leaf, 0.5)))


def test_nnx_module_ln_structured_is_torchs_on_the_transposed_weight():
    model = MLP(4, (10,), 3, rngs=nnx.Rngs(0))
    w = tie_free((4, 10), 4)
    model.layers[0].kernel[...] = jnp.asarray(w)
    linear = torch.nn.Linear(4, 10)
    linear.weight.data = torch.tensor(w.T.copy())  # torch's (out, in)
    P.ln_structured(linear, "weight", 0.3, n=2, dim=0)  # output units
    where = lambda p: jax.tree.map(lambda _: False, p) | {  # noqa: E731
        "layers": {0: {"kernel": True, "bias": False}, 1: {"kernel": False, "bias": False}}}
    masks = jp.ln_structured(model, 0.3, 2, -1, where=where)
    np.testing.assert_array_equal(np.asarray(masks["layers"][0]["kernel"]),
                                  linear.weight_mask.numpy().astype(bool).T)
    assert bool(jnp.all(masks["layers"][1]["kernel"]))
    before = jp.sparsity(model)
    assert jp.remove(model, masks) is model  # in place, as torch's functions
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel[...]),
                                  linear.weight.detach().numpy().T)
    assert jp.sparsity(model) > before


def test_jit_equals_eager():
    w = tie_free((6, 10), 0)
    first = jp.l1_unstructured(w, 0.3)

    @jax.jit
    def both(w, mask, amount):
        return (jp.l1_unstructured(w, amount, mask=mask),
                jp.ln_structured(w, amount, 2, 0, mask=mask),
                jp.global_unstructured({"w": w}, "l1", amount=amount, mask={"w": mask})["w"])

    got = both(w, first, 0.5)
    expected = (jp.l1_unstructured(w, 0.5, mask=first), jp.ln_structured(w, 0.5, 2, 0, mask=first),
                jp.l1_unstructured(w, 0.5, mask=first))
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


def test_ties_lower_index_pruned_first():
    """On tied magnitudes jopt prunes the lowest (row-major) indices of the tied class first;
    torch's topk leaves the order of ties unspecified. Both prune the same number of entries,
    and only ever within the tied class."""
    w = np.array([[0.5, -1.0, 1.0, 2.0], [1.0, -1.0, 3.0, 0.25]], np.float32)
    mask = np.asarray(jp.l1_unstructured(w, 4))
    # 0.25 and 0.5 first, then two of the four entries of magnitude 1: indices 1 and 2.
    np.testing.assert_array_equal(mask, [[False, False, False, True], [True, True, True, False]])
    module = torch_module(w)
    P.l1_unstructured(module, "weight", 4)
    theirs = torch_mask(module)
    assert (~theirs).sum() == (~mask).sum() == 4
    tied = np.abs(w) == 1.0
    np.testing.assert_array_equal(theirs[~tied], mask[~tied])
    assert (~theirs[tied]).sum() == 2
    # Channels of equal norm: the lower channel goes first.
    same = np.array([[1.0, -1.0, 2.0], [1.0, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(jp.ln_structured(same, 1, 2, 1)),
                                  [[False, True, True], [False, True, True]])
