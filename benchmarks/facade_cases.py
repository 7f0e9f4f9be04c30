"""The cases of ``facade_steps.py``: each a model in nnx (and as a parameter tree), the same
model in torch, and batches. ``L leaves`` (300K float32 parameters in L leaves, a loss that
touches every leaf), the Iris MLP, a small CNN with BatchNorm and a 2-layer GPT."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jopt import train
from jopt.train.model import cross_entropy

TOTAL, QUICK_TOTAL = 300_000, 3_000
POOL = 4  # batches a contender cycles through


# --------------------------------------------------------------------------------------------
# Cases: a model in nnx (and as a tree), the same model in torch, and batches
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One model and its loss, three ways: an ``nnx.Module``, a tree of arrays, torch.

    ``make_module()`` builds the same module every time (fixed seeds). ``module_loss(model,
    *batch)`` is its loss. The tree form is ``(params, state)`` with ``tree_loss(params, state,
    *batch) -> (loss, new_state)``; ``state`` is the non-parameter state (may be empty).
    ``make_torch()`` returns ``(parameters, loss(*batch))`` on ``common.torch_device()``.
    """

    name: str
    kind: str  # "leaves" or "model"
    make_module: Callable[[], nnx.Module]
    module_loss: Callable[..., jax.Array]
    batches: list[tuple[Any, ...]]
    make_torch: Callable[[], tuple[list[Any], Callable[..., Any]]]
    torch_batches: Callable[[], list[tuple[Any, ...]]]
    tree: Callable[[], tuple[Any, Any, Callable[..., Any]]] | None = None

    def tree_form(self) -> tuple[Any, Any, Callable[..., Any]]:
        """``(params, state, tree_loss)``: a plain dict of arrays and a pure loss."""
        if self.tree is not None:
            return self.tree()
        graphdef, params, state = nnx.split(self.make_module(), nnx.Param, ...)
        module_loss = self.module_loss

        def tree_loss(params: Any, state: Any, *batch: Any) -> tuple[jax.Array, Any]:
            model = nnx.merge(graphdef, nnx.State(params), nnx.State(state))
            loss = module_loss(model, *batch)
            return loss, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

        return nnx.to_pure_dict(params), nnx.to_pure_dict(state), tree_loss

    def sizes(self) -> tuple[int, int]:
        """(parameters, leaves)."""
        leaves = jax.tree.leaves(nnx.state(self.make_module(), nnx.Param))
        return sum(int(np.prod(x.shape)) for x in leaves), len(leaves)


class Leaves(nnx.Module):
    """``len(arrays)`` parameters, one per array."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.p = nnx.List([nnx.Param(jnp.asarray(a)) for a in arrays])


def leaves_case(total: int, leaves: int) -> Case:
    """``total`` float32 parameters in ``leaves`` equal leaves; loss sum_i mean(tanh(x p_i)^2)."""
    rng = np.random.default_rng(0)
    base, extra = divmod(total, leaves)
    arrays = [rng.standard_normal(base + (i < extra), dtype=np.float32) for i in range(leaves)]
    xs = [np.float32(0.5 + 0.1 * i) for i in range(POOL)]

    # One term per leaf, stacked and summed (a Python sum is a chain of L adds: the same
    # value, and XLA takes ~40% longer to compile it at 1,000 leaves).
    def module_loss(model: Leaves, x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.stack([jnp.mean(jnp.tanh(x * p[...]) ** 2) for p in model.p]))

    def tree_loss(params: dict[str, jax.Array], state: Any, x: jax.Array) -> tuple[Any, Any]:
        terms = [jnp.mean(jnp.tanh(x * v) ** 2) for v in params.values()]
        return jnp.sum(jnp.stack(terms)), state

    def tree() -> tuple[Any, Any, Callable[..., Any]]:
        params = {f"p{i:04d}": jnp.asarray(a) for i, a in enumerate(arrays)}
        return params, {}, tree_loss

    def make_torch() -> tuple[list[Any], Callable[..., Any]]:
        import torch

        device = common.torch_device()
        params = [torch.tensor(a, device=device, requires_grad=True) for a in arrays]

        def loss(x: Any) -> Any:
            return torch.stack([torch.tanh(x * p).square().mean() for p in params]).sum()

        return params, loss

    def torch_batches() -> list[tuple[Any, ...]]:
        import torch

        return [(torch.tensor(x, device=common.torch_device()),) for x in xs]

    return Case(
        name=f"{leaves} leaves",
        kind="leaves",
        make_module=lambda: Leaves(arrays),
        module_loss=module_loss,
        batches=[(jax.device_put(x),) for x in xs],
        make_torch=make_torch,
        torch_batches=torch_batches,
        tree=tree,
    )


def iris_case() -> Case:
    """``jopt.train.MLP`` 4-16-3 on Iris, batches of 16, cross-entropy."""
    data = train.load_iris()
    order = np.random.default_rng(0).permutation(len(data.x_train))
    rows = [order[i * 16 : (i + 1) * 16] for i in range(POOL)]
    arrays = [(data.x_train[r], data.y_train[r]) for r in rows]

    def make_module() -> nnx.Module:
        return train.MLP(data.num_features, (16,), data.num_classes, rngs=nnx.Rngs(0))

    def module_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        return cross_entropy(model(x), y)

    def make_torch() -> tuple[list[Any], Callable[..., Any]]:
        import torch
        from torch import nn

        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(data.num_features, 16), nn.ReLU(), nn.Linear(16, data.num_classes)
        ).to(common.torch_device())
        ce = nn.CrossEntropyLoss()
        return list(model.parameters()), lambda x, y: ce(model(x), y)

    return Case(
        "iris mlp", "model", make_module, module_loss, _jax_batches(arrays), make_torch,
        lambda: _torch_batches(arrays, int_dtype="int64"),
    )  # fmt: skip


class CNN(nnx.Module):
    """conv 3x3 (16) -> BatchNorm -> relu -> pool 2, conv 3x3 (32) -> relu -> pool 2, linear."""

    def __init__(self, side: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 16, (3, 3), padding="SAME", rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), padding="SAME", rngs=rngs)
        self.fc = nnx.Linear(32 * (side // 4) ** 2, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.avg_pool(jax.nn.relu(self.bn(self.conv1(x))), (2, 2), (2, 2))
        x = nnx.avg_pool(jax.nn.relu(self.conv2(x)), (2, 2), (2, 2))
        return self.fc(x.reshape(x.shape[0], -1))


def cnn_case(batch: int = 32, side: int = 28) -> Case:
    """:class:`CNN` on ``batch`` random ``side x side x 1`` images, 10 classes."""
    rng = np.random.default_rng(0)
    arrays = [
        (
            rng.standard_normal((batch, side, side, 1), dtype=np.float32),
            rng.integers(0, 10, batch).astype(np.int32),
        )
        for _ in range(POOL)
    ]

    def module_loss(model: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
        return cross_entropy(model(x), y)

    def make_torch() -> tuple[list[Any], Callable[..., Any]]:
        import torch
        from torch import nn
        from torch.nn import functional as F

        torch.manual_seed(0)

        class TorchCNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
                self.bn = nn.BatchNorm2d(16, momentum=0.1, eps=1e-5)
                self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
                self.fc = nn.Linear(32 * (side // 4) ** 2, 10)

            def forward(self, x: Any) -> Any:
                x = F.avg_pool2d(F.relu(self.bn(self.conv1(x))), 2)
                x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
                return self.fc(x.flatten(1))

        model = TorchCNN().to(common.torch_device())
        return list(model.parameters()), lambda x, y: F.cross_entropy(model(x), y)

    def torch_batches() -> list[tuple[Any, ...]]:  # NCHW
        return _torch_batches([(x.transpose(0, 3, 1, 2), y) for x, y in arrays], "int64")

    return Case(
        "cnn", "model", lambda: CNN(side, nnx.Rngs(0)), module_loss, _jax_batches(arrays),
        make_torch, torch_batches,
    )  # fmt: skip


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 32
    vocab_size: int = 65
    batch: int = 8


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs) -> None:
        d = cfg.n_embd
        self.ln_1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.c_attn = nnx.Linear(d, 3 * d, rngs=rngs)
        self.attn_proj = nnx.Linear(d, d, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.c_fc = nnx.Linear(d, 4 * d, rngs=rngs)
        self.mlp_proj = nnx.Linear(4 * d, d, rngs=rngs)
        self.n_head = cfg.n_head

    def attention(self, qkv: jax.Array) -> jax.Array:
        b, t, c = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        heads = [z.reshape(b, t, self.n_head, c // self.n_head) for z in jnp.split(qkv, 3, -1)]
        q, k, v = (z.transpose(0, 2, 1, 3) for z in heads)
        att = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(c // self.n_head)
        att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -jnp.inf)
        y = jax.nn.softmax(att, axis=-1) @ v
        return y.transpose(0, 2, 1, 3).reshape(b, t, c)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn_proj(self.attention(self.c_attn(self.ln_1(x))))
        return x + self.mlp_proj(jax.nn.gelu(self.c_fc(self.ln_2(x)), approximate=False))


class GPT(nnx.Module):
    """nanoGPT's shape: token and position embeddings, blocks, LayerNorm, untied head."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs) -> None:
        self.wte = nnx.Embed(cfg.vocab_size, cfg.n_embd, rngs=rngs)
        self.wpe = nnx.Embed(cfg.block_size, cfg.n_embd, rngs=rngs)
        self.h = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layer)])
        self.ln_f = nnx.LayerNorm(cfg.n_embd, epsilon=1e-5, rngs=rngs)
        self.lm_head = nnx.Linear(cfg.n_embd, cfg.vocab_size, use_bias=False, rngs=rngs)

    def __call__(self, idx: jax.Array) -> jax.Array:
        x = self.wte(idx) + self.wpe(jnp.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt_case(cfg: GPTConfig = GPTConfig()) -> Case:
    """:class:`GPT` on random token batches (next-token targets)."""
    rng = np.random.default_rng(0)
    tokens = [
        rng.integers(0, cfg.vocab_size, (cfg.batch, cfg.block_size + 1)).astype(np.int32)
        for _ in range(POOL)
    ]
    arrays = [(t[:, :-1], t[:, 1:]) for t in tokens]

    def module_loss(model: GPT, idx: jax.Array, targets: jax.Array) -> jax.Array:
        logits = model(idx)
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def make_torch() -> tuple[list[Any], Callable[..., Any]]:
        import torch
        from torch import nn
        from torch.nn import functional as F

        torch.manual_seed(0)
        d = cfg.n_embd

        class TorchBlock(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
                self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
                self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

            def forward(self, x: Any) -> Any:
                b, t, c = x.shape
                q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
                q, k, v = (z.view(b, t, cfg.n_head, c // cfg.n_head).transpose(1, 2)
                           for z in (q, k, v))  # fmt: skip
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
                return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))

        class TorchGPT(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.wte = nn.Embedding(cfg.vocab_size, d)
                self.wpe = nn.Embedding(cfg.block_size, d)
                self.h = nn.ModuleList([TorchBlock() for _ in range(cfg.n_layer)])
                self.ln_f = nn.LayerNorm(d)
                self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)

            def forward(self, idx: Any) -> Any:
                pos = torch.arange(idx.shape[1], device=idx.device)
                x = self.wte(idx) + self.wpe(pos)
                for block in self.h:
                    x = block(x)
                return self.lm_head(self.ln_f(x))

        model = TorchGPT().to(common.torch_device())

        def loss(idx: Any, targets: Any) -> Any:
            logits = model(idx)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

        return list(model.parameters()), loss

    return Case(
        "gpt", "model", lambda: GPT(cfg, nnx.Rngs(0)), module_loss, _jax_batches(arrays),
        make_torch, lambda: _torch_batches(arrays, "int64"),
    )  # fmt: skip


def _jax_batches(arrays: list[tuple[np.ndarray, ...]]) -> list[tuple[jax.Array, ...]]:
    return [tuple(jax.device_put(a) for a in batch) for batch in arrays]


def _torch_batches(arrays: list[tuple[np.ndarray, ...]], int_dtype: str) -> list[tuple[Any, ...]]:
    import torch

    device = common.torch_device()

    def put(a: np.ndarray) -> Any:
        if np.issubdtype(a.dtype, np.integer):
            a = a.astype(int_dtype)
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return [tuple(put(a) for a in batch) for batch in arrays]


def make_case(name: str, quick: bool) -> Case:
    """A case by name: ``"300 leaves"``, ``"iris"``, ``"cnn"``, ``"gpt"``."""
    if name.endswith("leaves"):
        return leaves_case(QUICK_TOTAL if quick else TOTAL, int(name.split()[0]))
    if name == "iris":
        return iris_case()
    if name == "cnn":
        return cnn_case(batch=4, side=8) if quick else cnn_case()
    if name == "gpt":
        tiny = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=65, batch=2)
        return gpt_case(tiny if quick else GPTConfig())
    raise ValueError(f"unknown case {name!r}")
