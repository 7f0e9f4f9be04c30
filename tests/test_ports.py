"""Port tests: real torch training scripts and their line-for-line ``jopt.optim`` ports on flax
nnx models, run from the same initial weights on the same batches and compared step by step.

Each torch script is written the way a PyTorch user writes it (``DataLoader``, ``zero_grad``,
``backward``, ``step``, a scheduler, ``param_groups``, ``clip_grad_norm_``, ``state_dict``); its
port changes only what JAX must (a loss function handed to ``step``/``backward``). The models
and their nnx ports, with torch's parameter names and layouts, are in ``ports_models``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_close
from flax import nnx

import jopt
import jopt.optim
from jopt.train import load_iris

torch = pytest.importorskip("torch")

import ports_gpt as gpt  # noqa: E402  (the port modules import torch)
import ports_models as pm  # noqa: E402

RTOL = 1e-5
# A cross-entropy near 0 is a difference of two O(1) float32 numbers (logsumexp - logit), so
# its absolute rounding error is ~1e-7 whatever the optimizer does: on Iris with batch size 1,
# per-sample losses of ~1e-4 differ from torch's by up to 2.4e-7 (1e-3 relative).
LOSS_ATOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch on one thread: these models are tiny, and on a busy machine two threads waiting
    for each other take longer than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_curves_close(ours, theirs, rtol=RTOL, atol=LOSS_ATOL, what="loss"):
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    np.testing.assert_allclose(
        np.asarray(ours), np.asarray(theirs), rtol=rtol, atol=atol, err_msg=what
    )


def assert_module_matches(model, torch_model, rtol=RTOL, atol=1e-6, leaf_rtol=0.0, noise=None):
    """Every parameter and buffer of ``torch_model`` against the port's Variable of that name,
    to ``rtol`` and an absolute tolerance of ``atol`` or ``leaf_rtol`` times the leaf's largest
    magnitude, whichever is larger.

    ``noise`` maps a name to ``(index, atol)``: entries whose exact gradient is zero, so that
    both frameworks move them by rounding noise only; those are held to ``atol``.
    """
    noise = noise or {}
    for name, tensor in torch_model.state_dict().items():
        if name.endswith(("num_batches_tracked", "masks")):
            continue
        target = model
        for part in name.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        ours, theirs = np.asarray(target[...]), tensor.numpy()
        if name in noise:
            index, noise_atol = noise[name]
            np.testing.assert_allclose(ours[index], theirs[index], atol=noise_atol, err_msg=name)
            keep = np.ones(theirs.shape, bool)
            keep[index] = False
            ours, theirs = ours[keep], theirs[keep]
        scale = float(np.max(np.abs(theirs), initial=0.0))
        tol = max(atol, leaf_rtol * scale)
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=tol, err_msg=name)


def ported(module_cls, torch_model, *args):
    """A fresh nnx port holding ``torch_model``'s current weights."""
    model = module_cls(*args)
    pm.copy_weights(model, torch_model)
    return model


# ------------------------------------------------------------------------------------------
# 1. The classic Iris script
# ------------------------------------------------------------------------------------------

# batch size, training rows used, epochs, StepLR step_size (in epochs): >= 60 steps each.
IRIS_RUNS = [(1, 20, 3, 1), (16, 120, 8, 3), (120, 120, 60, 20)]
IRIS_OPTIMIZERS = [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01))]


@pytest.mark.parametrize("run", IRIS_RUNS, ids=lambda r: f"batch{r[0]}")
@pytest.mark.parametrize(("name", "kwargs"), IRIS_OPTIMIZERS, ids=lambda c: str(c))
def test_iris_script_matches_torch(name, kwargs, run):
    """The Iris MLP trained with SGD(momentum) or Adam and StepLR, batch size 1, 16 and the full
    batch: jopt's loss curve and final weights follow torch's; the scheduler never recompiles
    (one program per batch shape: 16 rows and the short last batch of 8)."""
    torch.manual_seed(0)
    torch_model = pm.TorchMLP()
    model = ported(pm.MLP, torch_model)
    ours, optimizer = pm.iris_jopt(model, name, kwargs, *run)
    theirs, torch_optimizer = pm.iris_torch(torch_model, name, kwargs, *run)
    assert len(theirs) >= 50
    assert_curves_close(ours, theirs)
    assert_module_matches(model, torch_model)
    assert optimizer.param_groups[0]["lr"] == torch_optimizer.param_groups[0]["lr"]
    assert optimizer.compile_count == (2 if run[0] == 16 else 1)


# ------------------------------------------------------------------------------------------
# 2. A CNN with BatchNorm and dropout, through train() and eval()
# ------------------------------------------------------------------------------------------


def test_cnn_with_batchnorm_and_dropout_matches_torch_through_train_and_eval():
    """A CNN trained in train(), then (BatchNorm frozen, no dropout) in eval(), then in train()
    again: the loss curve, the held-out losses after each phase, the weights, BatchNorm's running
    statistics and the dropout counter all follow torch. The facade carries the module's
    non-parameter state through each step and honours the mode set just before it."""
    torch.manual_seed(0)
    train_steps = sum(n for mode, n in pm.CNN_PHASES if mode == "train")
    masks = pm.dropout_masks(train_steps, (pm.CNN_BATCH, 64), p=0.5, seed=4)
    torch_model = pm.TorchCNN(masks)
    model = ported(pm.CNN, torch_model, masks)
    ours, ours_val, optimizer = pm.cnn_jopt(model)
    theirs, theirs_val = pm.cnn_torch(torch_model)
    assert len(theirs) >= 50
    assert_curves_close(ours, theirs)
    assert_curves_close(ours_val, theirs_val, what="held-out loss")
    assert int(model.drop.count[...]) == torch_model.drop.count == len(masks)
    assert_module_matches(model, torch_model)
    assert optimizer.compile_count == 2  # one program in train mode, one in eval mode


def test_nnx_dropout_and_batchnorm_equal_a_functional_reference_run():
    """With nnx.Dropout and nnx.BatchNorm, ``opt.step(loss_fn, x, y)`` advances the dropout RNG
    once per step and writes BatchNorm's statistics back, landing where the same model trained
    with ``nnx.jit`` + ``nnx.value_and_grad`` + ``jopt.adamw`` lands; after ``eval()`` a step
    neither draws dropout masks nor moves the statistics."""
    xs, ys = pm.dropnet_batches()
    model = pm.DropNet(nnx.Rngs(0))
    optimizer = jopt.optim.AdamW(model, lr=0.01, weight_decay=0.01)
    ours = [float(optimizer.step(pm.classification_loss, x, y)) for x, y in zip(xs, ys)]

    reference = pm.DropNet(nnx.Rngs(0))
    tx = jopt.adamw(lr=0.01, weight_decay=0.01)
    state = tx.init(nnx.state(reference, nnx.Param))

    @nnx.jit
    def train_step(model, state, x, y):
        grad_fn = nnx.value_and_grad(pm.classification_loss, argnums=nnx.DiffState(0, nnx.Param))
        loss, grads = grad_fn(model, x, y)
        params = nnx.state(model, nnx.Param)
        updates, state = tx.update(grads, state, params)
        nnx.update(model, jopt.apply_updates(params, updates))
        return loss, state

    theirs = []
    for x, y in zip(xs, ys):
        loss, state = train_step(reference, state, x, y)
        theirs.append(float(loss))

    # Not bitwise (one flat buffer per group against a tree, in differently fused programs):
    # measured, the losses agree to 1.8e-7 relative and every weight and statistic to 1 ulp.
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
    assert int(model.drop.rngs.count[...]) == len(xs) == int(reference.drop.rngs.count[...])
    assert not np.allclose(model.bn.mean[...], 0.0)
    floats = nnx.Any(nnx.Param, nnx.BatchStat)
    assert_tree_close(nnx.state(model, floats), nnx.state(reference, floats), 1e-6, "DropNet")

    model.eval()
    mean = np.array(model.bn.mean[...])
    optimizer.step(pm.classification_loss, xs[0], ys[0])
    assert int(model.drop.rngs.count[...]) == len(xs)
    np.testing.assert_array_equal(model.bn.mean[...], mean)


# ------------------------------------------------------------------------------------------
# 3. nanoGPT: two named groups, warmup + cosine by hand, accumulation, clipping, resume
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt_runs():
    """The torch run and the uninterrupted jopt run, with a checkpoint taken after
    ``gpt.RESUME_AT`` steps (weights as NumPy copies and the optimizer's state dict)."""
    torch.manual_seed(0)
    torch_model = gpt.TorchGPT(gpt.CFG)
    model = ported(gpt.GPT, torch_model, gpt.CFG)
    checkpoint = {}

    def save(it, model, optimizer):
        if it == gpt.RESUME_AT:
            checkpoint["model"] = jax.tree.map(np.array, nnx.state(model, nnx.Param))
            checkpoint["optimizer"] = gpt.copy_state_dict(optimizer.state_dict())

    optimizer = gpt.configure_jopt_optimizer(model)
    ours = gpt.train_jopt(model, optimizer, 0, gpt.GPT_STEPS, on_step=save)
    theirs = gpt.train_torch(torch_model)
    return dict(
        ours=ours,
        theirs=theirs,
        model=model,
        torch_model=torch_model,
        optimizer=optimizer,
        checkpoint=checkpoint,
    )


def test_nanogpt_training_matches_torch(gpt_runs):
    """nanoGPT's loop: AdamW over a decay and a no-decay group built from named parameters,
    warmup + cosine lr written into ``param_groups`` each iteration, two accumulated
    ``backward()`` micro-steps, ``clip_grad_norm_(1.0)``: loss curve, gradient norms and final
    weights follow torch, and the lr schedule never recompiles the step."""
    (ours, ours_norms), (theirs, theirs_norms, torch_optimizer) = (
        gpt_runs["ours"],
        gpt_runs["theirs"],
    )
    assert len(theirs) >= 50 and sum(n > 1.0 for n in theirs_norms) >= 10  # clipping acts
    assert_curves_close(ours, theirs)
    assert_curves_close(ours_norms, theirs_norms, what="gradient norm")
    # The key third of each c_attn.bias adds q.b to every score of a query, which softmax
    # ignores: its exact gradient is zero and AdamW steps it by normalized rounding noise. It
    # stays at the noise level (|b| <= 4.4e-5, torch and jopt differing by <= 5.9e-5 measured).
    C = gpt.CFG.n_embd
    noise = {f"transformer.h.{i}.attn.c_attn.bias": (slice(C, 2 * C), 1e-4) for i in range(2)}
    # Adam divides each entry's gradient by its own RMS, so an entry whose gradient sits at
    # rounding level for a while takes noise-sized steps of full length: over all the weights the
    # worst deviation measured is 2.2e-5 of the leaf's largest entry (one entry of 4096 in
    # h.1.mlp.c_fc.weight is 3.8e-5 off relative to itself), hence 5e-5 of the leaf's scale.
    assert_module_matches(gpt_runs["model"], gpt_runs["torch_model"], leaf_rtol=5e-5, noise=noise)
    optimizer = gpt_runs["optimizer"]
    names = [g["param_names"] for g in optimizer.state_dict()["param_groups"]]
    assert names == [g["param_names"] for g in torch_optimizer.state_dict()["param_groups"]]
    # Measured 3 (first backward, accumulating backward, step): the lr written into
    # param_groups at every iteration compiles nothing.
    assert optimizer.compile_count <= 3


def test_nanogpt_resume_continues_bitwise(gpt_runs):
    """Resuming in torch's order (fresh model, fresh optimizer, then the saved weights written
    into the model with ``nnx.update`` and the optimizer state dict loaded) continues exactly
    as the uninterrupted run: the same losses and weights, bit for bit."""
    checkpoint = gpt_runs["checkpoint"]
    model = gpt.GPT(gpt.CFG)
    optimizer = gpt.configure_jopt_optimizer(model)
    nnx.update(model, jax.tree.map(jnp.asarray, checkpoint["model"]))
    optimizer.load_state_dict(checkpoint["optimizer"])
    losses, norms = gpt.train_jopt(model, optimizer, gpt.RESUME_AT, gpt.GPT_STEPS)
    straight_losses, straight_norms = gpt_runs["ours"]
    np.testing.assert_array_equal(losses, straight_losses[gpt.RESUME_AT :])
    np.testing.assert_array_equal(norms, straight_norms[gpt.RESUME_AT :])
    straight = gpt_runs["model"]
    for a, b in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)),
        jax.tree.leaves(nnx.state(straight, nnx.Param)),
    ):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------
# 4. torch optimizer state, by parameter name, into the nnx port
# ------------------------------------------------------------------------------------------


def iris_full_batch():
    data = load_iris()
    return data.x_train, data.y_train


def torch_full_batch_steps(model, optimizer, steps):
    x, y = iris_full_batch()
    x, y = torch.tensor(x), torch.tensor(y).long()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def jopt_full_batch_steps(model, optimizer, steps):
    x, y = iris_full_batch()
    return [float(optimizer.step(pm.classification_loss, model, x, y)) for _ in range(steps)]


def trained_torch_mlp(make_optimizer, steps=10):
    torch.manual_seed(2)
    model = pm.TorchMLP()
    optimizer = make_optimizer(model)
    torch_full_batch_steps(model, optimizer, steps)
    return model, optimizer


def adamw_two_named_groups(model):
    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [(n, p) for n, p in named if p.dim() >= 2], "weight_decay": 0.05},
            {"params": [(n, p) for n, p in named if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=0.01,
        betas=(0.8, 0.95),
    )


def test_torch_state_dict_with_param_names_loads_into_the_nnx_port_by_name():
    """A torch AdamW state dict with ``param_names`` (two groups) loads into an optimizer over
    the nnx port whose groups list the same parameters in the opposite order, so only the names
    can pair them; both then continue on the same trajectory."""
    torch_model, torch_optimizer = trained_torch_mlp(adamw_two_named_groups)
    sd = torch_optimizer.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["fc1.weight", "fc2.weight"]
    model = ported(pm.MLP, torch_model)
    named = jopt.optim.named_parameters(model)
    assert [(n, tuple(p.shape)) for n, p in named] == [
        (n, tuple(p.shape)) for n, p in torch_model.named_parameters()
    ]
    optimizer = jopt.optim.AdamW(
        [
            {"params": [(n, p) for n, p in named if p.ndim >= 2][::-1], "weight_decay": 0.05},
            {"params": [(n, p) for n, p in named if p.ndim < 2][::-1], "weight_decay": 0.0},
        ],
        lr=0.01,
        betas=(0.8, 0.95),
    )
    optimizer.load_state_dict(sd)
    ours = jopt_full_batch_steps(model, optimizer, 20)
    theirs = torch_full_batch_steps(torch_model, torch_optimizer, 20)
    assert_curves_close(ours, theirs)
    assert_module_matches(model, torch_model)


def test_from_torch_builds_the_same_optimizer_over_the_nnx_port():
    """``jopt.optim.from_torch`` gives an optimizer of torch's class, hyperparameters and state
    over the port's named parameters, which continues on torch's trajectory."""

    def make(model):
        return torch.optim.Adam(
            model.named_parameters(), lr=0.01, betas=(0.8, 0.99), weight_decay=1e-3, amsgrad=True
        )

    torch_model, torch_optimizer = trained_torch_mlp(make)
    model = ported(pm.MLP, torch_model)
    optimizer = jopt.optim.from_torch(torch_optimizer, jopt.optim.named_parameters(model))
    assert type(optimizer) is jopt.optim.Adam
    group, torch_group = optimizer.param_groups[0], torch_optimizer.param_groups[0]
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        assert group[key] == torch_group[key], key
    ours = jopt_full_batch_steps(model, optimizer, 20)
    theirs = torch_full_batch_steps(torch_model, torch_optimizer, 20)
    assert_curves_close(ours, theirs)
    assert_module_matches(model, torch_model)


SHAPES = {
    "fc1.weight": ("(16, 4)", "(8, 4)"),
    "fc1.bias": ("(16,)", "(8,)"),
    "fc2.weight": ("(3, 16)", "(3, 8)"),
}


def assert_names_a_mismatch(message):
    named = [name for name in SHAPES if name in message]
    assert named, message
    assert all(shape in message for shape in SHAPES[named[0]]), message


def test_a_state_dict_of_other_shapes_is_refused_naming_the_parameter():
    """torch's state for a 16-unit hidden layer does not load into an 8-unit port: a ValueError
    names the parameter and both shapes, from ``load_state_dict`` and from ``from_torch``."""
    torch_model, torch_optimizer = trained_torch_mlp(
        lambda m: torch.optim.Adam(m.named_parameters(), lr=0.01), steps=2
    )
    model = pm.MLP((4, 8, 3))
    optimizer = jopt.optim.Adam(jopt.optim.named_parameters(model), lr=0.01)
    with pytest.raises(ValueError) as refused:
        optimizer.load_state_dict(torch_optimizer.state_dict())
    assert_names_a_mismatch(str(refused.value))
    with pytest.raises(ValueError) as refused:
        jopt.optim.from_torch(torch_optimizer, jopt.optim.named_parameters(model))
    assert_names_a_mismatch(str(refused.value))
