"""The models of the port tests, each written twice: in torch and in flax nnx, and the short
training scripts of the Iris MLP and the CNN, each written in torch and ported to jopt.optim.

The nnx ports store parameters the way torch does (a linear layer's ``weight`` is ``(out, in)``,
a convolution's is ``OIHW``) under the same attribute names, so that ``model.named_parameters()``
in torch and ``jopt.optim.named_parameters(model)`` in nnx list the same names and shapes, and
:func:`copy_weights` moves a torch model's parameters and buffers into its port.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import TensorDataset

import jopt.optim
from jopt.train import DataLoader, load_iris

# ------------------------------------------------------------------------------------------
# nnx layers with torch's parameter layout
# ------------------------------------------------------------------------------------------


class Linear(nnx.Module):
    """``torch.nn.Linear``: ``y = x @ weight.T + bias`` with ``weight`` of shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        self.weight = nnx.Param(jnp.zeros((out_features, in_features)))
        self.bias = nnx.Param(jnp.zeros(out_features)) if bias else None

    def __call__(self, x):
        y = x @ self.weight[...].T
        return y if self.bias is None else y + self.bias[...]


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` (stride 1, NCHW) with an ``OIHW`` weight."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias=True
    ):
        k = kernel_size
        self.weight = nnx.Param(jnp.zeros((out_channels, in_channels, k, k)))
        self.bias = nnx.Param(jnp.zeros(out_channels)) if bias else None
        self.padding = padding

    def __call__(self, x):
        pad = [(self.padding, self.padding)] * 2
        y = jax.lax.conv_general_dilated(
            x, self.weight[...], (1, 1), pad, dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return y if self.bias is None else y + self.bias[...][None, :, None, None]


class BatchNorm2d(nnx.Module):
    """``torch.nn.BatchNorm2d``: batch statistics in training (the running variance updated
    with the unbiased estimate, ``momentum`` weighting the new batch), running ones in eval."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        self.weight = nnx.Param(jnp.ones(num_features))
        self.bias = nnx.Param(jnp.zeros(num_features))
        self.running_mean = nnx.BatchStat(jnp.zeros(num_features))
        self.running_var = nnx.BatchStat(jnp.ones(num_features))
        self.eps, self.momentum = eps, momentum
        self.use_running_average = False

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.running_mean[...], self.running_var[...]
        else:
            mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
            n = x.size // x.shape[1]
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean[...] + m * mean
            self.running_var[...] = (1 - m) * self.running_var[...] + m * var * n / (n - 1)
        scale = self.weight[...] / jnp.sqrt(var + self.eps)
        return (x - mean[None, :, None, None]) * scale[None, :, None, None] + self.bias[...][
            None, :, None, None
        ]


class Mask(nnx.Variable):
    """Precomputed dropout masks: module state, not a parameter."""


class Counter(nnx.Variable):
    """How many masks a :class:`MaskDropout` has used."""


class MaskDropout(nnx.Module):
    """Dropout whose mask at its ``k``-th training call is ``masks[k]`` (already scaled by
    ``1 / (1 - p)``), so torch and jax drop the same units. ``k`` lives in module state and
    advances only in training; ``deterministic`` (set by ``eval()``) makes it the identity."""

    def __init__(self, masks: np.ndarray):
        self.masks = Mask(jnp.asarray(masks))
        self.count = Counter(jnp.zeros((), jnp.int32))
        self.deterministic = False

    def __call__(self, x):
        if self.deterministic:
            return x
        mask = self.masks[...][self.count[...]]
        self.count[...] = self.count[...] + 1
        return x * mask


class TorchMaskDropout(nn.Module):
    """:class:`MaskDropout` in torch: ``self.training`` plays ``deterministic``."""

    def __init__(self, masks: np.ndarray):
        super().__init__()
        self.register_buffer("masks", torch.tensor(masks))
        self.count = 0

    def forward(self, x):
        if not self.training:
            return x
        mask = self.masks[self.count]
        self.count += 1
        return x * mask


def dropout_masks(steps: int, shape: tuple[int, ...], p: float, seed: int = 0) -> np.ndarray:
    """``steps`` inverted-dropout masks: 0 with probability ``p``, else ``1 / (1 - p)``."""
    keep = np.random.default_rng(seed).random((steps, *shape)) >= p
    return (keep / (1 - p)).astype(np.float32)


def copy_weights(model: nnx.Module, torch_model: nn.Module) -> None:
    """Write every parameter and buffer of ``torch_model`` into the port's Variable of the same
    dotted name (list indices as numbers), checking the shapes."""
    for name, tensor in torch_model.state_dict().items():
        if name.endswith("num_batches_tracked") or name.endswith("masks"):
            continue
        target = model
        for part in name.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        value = jnp.asarray(tensor.detach().numpy())
        assert target.shape == value.shape, (name, target.shape, value.shape)
        target[...] = value


def cross_entropy(logits, labels):
    """``torch.nn.functional.cross_entropy`` (mean over the batch) in jax."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classification_loss(model, x, y):
    """The loss every classifier here is trained on: torch's ``cross_entropy``."""
    return cross_entropy(model(x), y)


# ------------------------------------------------------------------------------------------
# Iris: an MLP
# ------------------------------------------------------------------------------------------


class TorchMLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (4, 16, 3)):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class MLP(nnx.Module):
    def __init__(self, sizes: tuple[int, ...] = (4, 16, 3)):
        self.fc1 = Linear(sizes[0], sizes[1])
        self.fc2 = Linear(sizes[1], sizes[2])

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def iris_torch(model, name, kwargs, batch_size, rows, epochs, step_size):
    data = load_iris()
    x, y = torch.tensor(data.x_train[:rows]), torch.tensor(data.y_train[:rows]).long()
    loader = TorchDataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = getattr(torch.optim, name)(model.parameters(), **kwargs)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.5)
    losses = []
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
    return losses, optimizer


def iris_jopt(model, name, kwargs, batch_size, rows, epochs, step_size):
    data = load_iris()
    loader = DataLoader(data.x_train[:rows], data.y_train[:rows], batch_size, shuffle=False)
    optimizer = getattr(jopt.optim, name)(model, **kwargs)
    scheduler = jopt.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.5)
    losses = []
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = optimizer.step(classification_loss, xb, yb)
            losses.append(float(loss))
        scheduler.step()
    return losses, optimizer


# ------------------------------------------------------------------------------------------
# CNNs with BatchNorm and dropout: torch's layers with mask dropout, and flax's own
# ------------------------------------------------------------------------------------------


class TorchCNN(nn.Module):
    """1x8x8 images: conv 3x3 -> BatchNorm -> ReLU -> 2x2 max pool -> dropout -> linear."""

    def __init__(self, masks: np.ndarray, channels: int = 4, classes: int = 5):
        super().__init__()
        # No bias before BatchNorm: its gradient is exactly zero, and Adam would turn the
        # rounding noise standing in for it into full-size steps, different in each framework.
        self.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = TorchMaskDropout(masks)
        self.fc = nn.Linear(channels * 16, classes)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


class CNN(nnx.Module):
    def __init__(self, masks: np.ndarray, channels: int = 4, classes: int = 5):
        self.conv = Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = BatchNorm2d(channels)
        self.drop = MaskDropout(masks)
        self.fc = Linear(channels * 16, classes)

    def __call__(self, x):
        x = jax.nn.relu(self.bn(self.conv(x)))
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        return self.fc(self.drop(x.reshape(n, -1)))


def cnn_data(batch: int):
    """Four training batches of 1x8x8 images (to cycle through) and a held-out batch; the label
    is the largest of five fixed projections, so the task is learnable."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5 * batch, 1, 8, 8)).astype(np.float32)
    y = np.argmax(x.reshape(len(x), -1) @ rng.normal(size=(64, 5)), axis=1).astype(np.int32)
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    return batches[:4], batches[4]


CNN_BATCH, CNN_PHASES = 16, (("train", 25), ("eval", 10), ("train", 25))


def cnn_torch(model):
    train, (x_val, y_val) = cnn_data(CNN_BATCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    losses, val_losses, step = [], [], 0
    for mode, steps in CNN_PHASES:
        model.train() if mode == "train" else model.eval()
        for _ in range(steps):
            x, y = (torch.tensor(a) for a in train[step % len(train)])
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y.long())
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor(x_val))
            val_losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(y_val).long()))
    return losses, [v.item() for v in val_losses]


def cnn_jopt(model):
    train, (x_val, y_val) = cnn_data(CNN_BATCH)
    optimizer = jopt.optim.Adam(model, lr=0.01, weight_decay=1e-4)
    losses, val_losses, step = [], [], 0
    for mode, steps in CNN_PHASES:
        model.train() if mode == "train" else model.eval()
        for _ in range(steps):
            x, y = train[step % len(train)]
            losses.append(float(optimizer.step(classification_loss, x, y)))
            step += 1
        model.eval()
        val_losses.append(float(classification_loss(model, x_val, y_val)))
    return losses, val_losses, optimizer


class DropNet(nnx.Module):
    """flax's own Dropout and BatchNorm between two linear layers."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(8, 32, use_bias=False, rngs=rngs)  # no bias before BatchNorm
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.fc2 = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(jax.nn.relu(self.bn(self.fc1(x)))))


def dropnet_batches(steps: int = 20):
    """``steps`` batches of 16 rows of 8 features with 3 classes."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(steps, 16, 8)).astype(np.float32)
    return x, (x[..., :3] @ rng.normal(size=(3, 3))).argmax(-1).astype(np.int32)
