"""Pruning through the facade: ``opt.prune(mask)`` against torch's ``torch.nn.utils.prune``.

The torch script trains the Iris MLP, prunes its two weight matrices globally by L1 (50%) after
a few epochs, prunes 30% of what is left a few epochs later (torch's ``PruningContainer``) and
trains on: the optimizer keeps stepping ``weight_orig``. Its port prunes with
``jopt.prune.global_unstructured`` and ``opt.prune``. For every optimizer both must give the
same losses, the same masks and the same weights, the pruned ones exactly zero.

jopt's pruned weights are zero, where torch's ``weight_orig`` keeps its old values at the
pruned entries. No update rule reads them but Adafactor's, whose step size scales by the
parameter's RMS: for Adafactor the torch script zeroes ``weight_orig`` where it prunes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jopt.optim
import jopt.prune

torch = pytest.importorskip("torch")
prune = pytest.importorskip("torch.nn.utils.prune")

from ports_models import MLP, TorchMLP, classification_loss, copy_weights  # noqa: E402

from jopt.train import load_iris  # noqa: E402

EPOCHS, ROWS = 10, 120
PRUNE_AT = {3: 0.5, 6: 0.3}  # epoch -> amount of the weights still kept

# name, constructor kwargs (shared by torch and jopt), batch size
CONFIGS = [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01), 30),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), 30),
    ("Adam", dict(lr=0.01, weight_decay=0.01, amsgrad=True), 30),
    ("AdamW", dict(lr=0.01), 30),
    ("RMSprop", dict(lr=0.005, momentum=0.5, centered=True, weight_decay=0.01), 30),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01), 30),
    ("Adadelta", dict(weight_decay=0.01), 30),
    ("Adamax", dict(lr=0.01), 30),
    ("NAdam", dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True), 30),
    ("RAdam", dict(lr=0.01), 30),
    ("Rprop", dict(lr=0.01), 120),
    ("ASGD", dict(lr=0.05, t0=10, weight_decay=0.01), 30),
    ("Adafactor", dict(lr=0.01, weight_decay=0.01), 30),
    ("Muon", dict(lr=0.02), 30),
    ("LBFGS", dict(lr=0.1, max_iter=3), 120),  # at lr=1 it overfits: far from reproducible
]


def batches(batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    data = load_iris()
    x, y = data.x_train[:ROWS], data.y_train[:ROWS].astype(np.int64)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, ROWS, batch_size)]


def torch_script(model, name, kwargs, batch_size):
    """Train, prune, train: torch's own idiom, the optimizer built before the pruning."""
    params = [model.fc1.weight, model.fc2.weight] if name == "Muon" else model.parameters()
    optimizer = getattr(torch.optim, name)(params, **kwargs)
    criterion = torch.nn.CrossEntropyLoss()
    losses = []
    for epoch in range(EPOCHS):
        if epoch in PRUNE_AT:
            # torch's ``module.weight`` is ``weight_orig * weight_mask`` as of the last forward:
            # an evaluation before pruning ranks the weights as they are now.
            with torch.no_grad():
                model(torch.tensor(batches(ROWS)[0][0]))
            prune.global_unstructured(
                [(model.fc1, "weight"), (model.fc2, "weight")],
                pruning_method=prune.L1Unstructured,
                amount=PRUNE_AT[epoch],
            )
            if name == "Adafactor":  # its step size scales by the RMS of weight_orig
                with torch.no_grad():
                    for m in (model.fc1, model.fc2):
                        m.weight_orig.mul_(m.weight_mask)
        for xb, yb in batches(batch_size):
            xb, yb = torch.tensor(xb), torch.tensor(yb)

            def closure(xb=xb, yb=yb):
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                return loss

            losses.append(float(optimizer.step(closure).detach()))
    masks = [model.fc1.weight_mask.numpy() != 0, model.fc2.weight_mask.numpy() != 0]
    weights = [(m.weight_orig * m.weight_mask).detach().numpy() for m in (model.fc1, model.fc2)]
    return losses, masks, weights


def jopt_script(model, name, kwargs, batch_size, path):
    """The port: the mask goes to the optimizer, which holds the pruned weights at zero."""
    matrices = [("fc1.weight", model.fc1.weight), ("fc2.weight", model.fc2.weight)]
    optimizer = getattr(jopt.optim, name)(matrices if name == "Muon" else model, **kwargs)
    lead = (model,) if name == "Muon" else ()  # named parameters: the module is an argument

    def as_given(mask):  # the module's mask, for the two matrices
        return [mask["fc1"]["weight"], mask["fc2"]["weight"]]

    losses = []
    for epoch in range(EPOCHS):
        if epoch in PRUNE_AT:
            before = None if epoch == min(PRUNE_AT) else optimizer.mask
            if name == "Muon" and before is not None:
                before = {"fc1": {"weight": before[0], "bias": True},
                          "fc2": {"weight": before[1], "bias": True}}
            mask = jopt.prune.global_unstructured(
                model, amount=PRUNE_AT[epoch], mask=before, where=jopt.prune.matrices
            )
            optimizer.prune(as_given(mask) if name == "Muon" else mask)
        for xb, yb in batches(batch_size):
            if path == "loss_fn":  # value, gradient and update in one compiled call
                losses.append(float(optimizer.step(classification_loss, *lead, xb, yb)))
            elif path == "closure":
                def closure(xb=xb, yb=yb):
                    optimizer.zero_grad()
                    return optimizer.backward(classification_loss, *lead, xb, yb)

                losses.append(float(optimizer.step(closure)))
            elif path == "backward":
                optimizer.zero_grad()
                losses.append(float(optimizer.backward(classification_loss, *lead, xb, yb)))
                optimizer.step()
            else:  # gradients of the weights themselves: the step masks them
                loss, grads = nnx.value_and_grad(classification_loss)(model, xb, yb)
                losses.append(float(loss))
                optimizer.step(grads)
    mask = optimizer.mask
    masks = [np.asarray(m) for m in (mask if name == "Muon" else as_given(mask))]
    weights = [np.asarray(model.fc1.weight[...]), np.asarray(model.fc2.weight[...])]
    return losses, masks, weights


def ported_pair(name, kwargs, batch_size, path="closure"):
    torch.manual_seed(0)
    tmodel = TorchMLP((4, 16, 3))
    model = MLP((4, 16, 3))
    copy_weights(model, tmodel)
    theirs = torch_script(tmodel, name, kwargs, batch_size)
    ours = jopt_script(model, name, kwargs, batch_size, path)
    return ours, theirs


def assert_same_training(ours, theirs, rtol=2e-5, atol=2e-6):
    (losses, masks, weights), (t_losses, t_masks, t_weights) = ours, theirs
    np.testing.assert_allclose(losses, t_losses, rtol=rtol, atol=atol)
    for mask, t_mask, w, t_w in zip(masks, t_masks, weights, t_weights):
        np.testing.assert_array_equal(mask, t_mask)
        assert np.all(w[~mask] == 0) and not np.any(np.signbit(w[~mask]))
        np.testing.assert_allclose(w, t_w, rtol=rtol, atol=atol)
    assert 0.6 < np.mean(~np.concatenate([m.ravel() for m in masks])) < 0.7  # 50%, then 30%


DEFAULT_RUN = {"SGD", "Adam", "Adafactor", "Muon", "LBFGS"}  # the others: in the slow pass


@pytest.mark.parametrize(("name", "kwargs", "batch_size"), [
    pytest.param(*c, id=f"{c[0]}-{i}", marks=() if c[0] in DEFAULT_RUN else pytest.mark.slow)
    for i, c in enumerate(CONFIGS)
])
def test_pruned_training_follows_torch(name, kwargs, batch_size):
    tol = dict(rtol=1e-4, atol=1e-5) if name in ("LBFGS", "Muon") else {}
    assert_same_training(*ported_pair(name, kwargs, batch_size), **tol)


@pytest.mark.parametrize(("config", "path"), [(0, "loss_fn"), (0, "backward"), (0, "grads"),
                                              (-1, "loss_fn")])
def test_every_step_path_masks_the_gradients(config, path):
    name, kwargs, batch_size = CONFIGS[config]
    assert_same_training(*ported_pair(name, kwargs, batch_size, path))


# ------------------------------------------------------------------------------------------
# The mask itself
# ------------------------------------------------------------------------------------------


def small_problem():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=5), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    return params, x


def loss_fn(p, x):
    return jnp.sum((x @ p["w"] + p["b"]) ** 2)


def test_a_new_mask_costs_no_compilation_and_none_releases_the_weights():
    params, x = small_problem()
    opt = jopt.optim.Adam(params, lr=0.1)
    opt.prune(jopt.prune.l1_unstructured(params, 0.5, where=jopt.prune.matrices))
    opt.step(loss_fn, x)
    compiled = opt.compile_count
    mask = jopt.prune.l1_unstructured(opt.params, 0.5, mask=opt.mask, where=jopt.prune.matrices)
    opt.prune(mask)
    for _ in range(3):
        opt.step(loss_fn, x)
    assert opt.compile_count == compiled
    pruned = ~np.asarray(mask["w"])
    assert pruned.sum() == 15 + 8 and np.all(np.asarray(opt.params["w"])[pruned] == 0)
    opt.prune(None)  # torch's prune.remove: the values stay, nothing holds them
    assert opt.mask is None
    opt.step(loss_fn, x)
    assert np.all(np.asarray(opt.params["w"])[pruned] != 0)


def test_torchs_float_mask_and_the_pure_dict_of_a_module_are_taken():
    params, x = small_problem()
    mask = jopt.prune.l1_unstructured(params, 0.4)
    ours = jopt.optim.SGD(params, lr=0.01, momentum=0.9)
    ours.prune(mask)
    theirs = jopt.optim.SGD(params, lr=0.01, momentum=0.9)
    theirs.prune(jax.tree.map(lambda m: np.asarray(m, np.float32), mask))  # weight_mask
    for _ in range(3):
        ours.step(loss_fn, x)
        theirs.step(loss_fn, x)
    jax.tree.map(np.testing.assert_array_equal, ours.params, theirs.params)
    jax.tree.map(np.testing.assert_array_equal, ours.mask, mask)


def test_a_bad_mask_is_refused_and_changes_nothing():
    params, x = small_problem()
    opt = jopt.optim.SGD(params, lr=0.1)
    good = jopt.prune.l1_unstructured(params, 0.5)
    opt.prune(good)
    before = jax.tree.map(np.asarray, opt.params)
    with pytest.raises(ValueError, match="mask"):
        opt.prune({"w": good["w"]})
    with pytest.raises(ValueError, match="mask"):
        opt.prune({"w": good["w"], "b": np.ones(4, bool)})
    jax.tree.map(np.testing.assert_array_equal, opt.params, before)
    jax.tree.map(np.testing.assert_array_equal, opt.mask, good)


def test_groups_take_a_mask_each_and_gradients_show_it():
    params, x = small_problem()
    opt = jopt.optim.SGD([{"params": {"w": params["w"]}}, {"params": {"b": params["b"]}}],
                         lr=0.1)
    mask = jopt.prune.l1_unstructured({"w": params["w"]}, 0.5)
    opt.prune([mask, None])
    assert opt.mask[1] is None

    def grouped_loss(groups, x):
        return loss_fn({**groups[0], **groups[1]}, x)

    opt.backward(grouped_loss, x)
    grads = opt.grads
    assert np.all(np.asarray(grads[0]["w"])[~np.asarray(mask["w"])] == 0)
    assert np.all(np.asarray(grads[1]["b"]) != 0)
    opt.step()
    assert np.all(np.asarray(opt.params[0]["w"])[~np.asarray(mask["w"])] == 0)
    with pytest.raises(ValueError, match="2 parameter groups"):
        opt.prune([mask])


def test_sparse_adam_holds_pruned_weights_at_zero():
    params, x = small_problem()
    opt = jopt.optim.SparseAdam(params, lr=0.1)
    mask = jopt.prune.l1_unstructured(params, 0.5)
    opt.prune(mask)
    for _ in range(5):
        opt.step(loss_fn, x)
    for w, m in zip(jax.tree.leaves(opt.params), jax.tree.leaves(mask)):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
        assert np.all(np.asarray(w)[np.asarray(m)] != 0)
