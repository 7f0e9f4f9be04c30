"""nanoGPT twice: its model in torch and in nnx (the same parameter names and layouts), and
the core of its ``train.py`` (``configure_optimizers``, ``get_lr``, gradient accumulation,
``clip_grad_norm_``) with its line-for-line ``jopt.optim`` port.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from ports_models import Linear, cross_entropy
from torch import nn
from torch.nn import functional as F

import jopt.optim

# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 65
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 32


class TorchAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size))
        size = cfg.block_size
        self.register_buffer("mask", mask.view(1, 1, size, size), persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class TorchBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = TorchAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.ModuleDict(
            dict(
                c_fc=nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
                c_proj=nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            )
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class TorchGPT(nn.Module):
    """nanoGPT's model (dropout 0, untied head), with nanoGPT's initialisation."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                h=nn.ModuleList([TorchBlock(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.size(1)))
        for block in t.h:
            x = block(x)
        logits = self.lm_head(t.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class Embedding(nnx.Module):
    def __init__(self, num: int, dim: int):
        self.weight = nnx.Param(jnp.zeros((num, dim)))

    def __call__(self, idx):
        return self.weight[...][idx]


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm`` over the last axis (biased variance, eps 1e-5)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.weight = nnx.Param(jnp.ones(dim))
        self.bias = nnx.Param(jnp.zeros(dim))
        self.eps = eps

    def __call__(self, x):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + self.eps) * self.weight[...] + self.bias[...]


class Attention(nnx.Module):
    def __init__(self, cfg: GPTConfig):
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head

    def __call__(self, x):
        B, T, C = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=2)
        q, k, v = (t.reshape(B, T, self.n_head, C // self.n_head).swapaxes(1, 2) for t in (q, k, v))
        att = (q @ k.swapaxes(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
        att = jnp.where(jnp.tril(jnp.ones((T, T), bool)), att, -jnp.inf)
        y = jax.nn.softmax(att, axis=-1) @ v
        return self.c_proj(y.swapaxes(1, 2).reshape(B, T, C))


class FeedForward(nnx.Module):
    def __init__(self, cfg: GPTConfig):
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd)

    def __call__(self, x):
        return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=False))


class Block(nnx.Module):
    def __init__(self, cfg: GPTConfig):
        self.ln_1 = LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd)
        self.mlp = FeedForward(cfg)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    def __init__(self, cfg: GPTConfig):
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = Embedding(cfg.block_size, cfg.n_embd)
        self.h = nnx.List([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd)


class GPT(nnx.Module):
    """:class:`TorchGPT` in nnx, parameter for parameter under the same names."""

    def __init__(self, cfg: GPTConfig):
        self.transformer = Transformer(cfg)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def __call__(self, idx, targets):
        t = self.transformer
        x = t.wte(idx) + t.wpe(jnp.arange(idx.shape[1]))
        for block in t.h:
            x = block(x)
        logits = self.lm_head(t.ln_f(x))
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ------------------------------------------------------------------------------------------
# train.py, in torch and in jopt
# ------------------------------------------------------------------------------------------

CFG = GPTConfig()
GPT_STEPS, RESUME_AT, ACCUM, GPT_BATCH = 60, 30, 2, 4
LEARNING_RATE, MIN_LR, WARMUP, DECAY_ITERS = 6e-3, 6e-4, 10, 50
WEIGHT_DECAY, BETAS = 0.1, (0.9, 0.95)


def get_lr(it):
    """nanoGPT's learning rate: linear warmup, cosine decay to ``MIN_LR``, then constant."""
    if it < WARMUP:
        return LEARNING_RATE * (it + 1) / (WARMUP + 1)
    if it > DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LEARNING_RATE - MIN_LR)


def batches():
    """``(x, y)`` for every micro-step: blocks of a token stream with structure to learn."""
    rng = np.random.default_rng(6)
    n = 4000
    data = (np.arange(n) * 7 + rng.integers(0, 3, n)) % CFG.vocab_size
    ix = rng.integers(0, n - CFG.block_size - 1, (GPT_STEPS * ACCUM, GPT_BATCH))
    x = np.stack([[data[i : i + CFG.block_size] for i in row] for row in ix]).astype(np.int32)
    y = np.stack([[data[i + 1 : i + 1 + CFG.block_size] for i in row] for row in ix])
    return x, y.astype(np.int32)


def configure_torch_optimizer(model):
    """nanoGPT's ``configure_optimizers``: weight decay for matrices and embeddings only."""
    param_dict = {pn: p for pn, p in model.named_parameters() if p.requires_grad}
    decay = [(n, p) for n, p in param_dict.items() if p.dim() >= 2]
    nodecay = [(n, p) for n, p in param_dict.items() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": nodecay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS)


def configure_jopt_optimizer(model):
    """:func:`configure_torch_optimizer` over the nnx port."""
    param_dict = dict(jopt.optim.named_parameters(model))
    decay = [(n, p) for n, p in param_dict.items() if p.ndim >= 2]
    nodecay = [(n, p) for n, p in param_dict.items() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": nodecay, "weight_decay": 0.0},
    ]
    return jopt.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS)


def train_torch(model):
    """nanoGPT's training loop in torch: per-step losses, gradient norms and the optimizer."""
    xs, ys = (torch.tensor(a).long() for a in batches())
    optimizer = configure_torch_optimizer(model)
    losses, norms = [], []
    for it in range(GPT_STEPS):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        total = 0.0
        for micro in range(ACCUM):
            loss = model(xs[it * ACCUM + micro], ys[it * ACCUM + micro]) / ACCUM
            total += loss.item()
            loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return losses, norms, optimizer


def micro_loss(model, x, y):
    return model(x, y) / ACCUM


def train_jopt(model, optimizer, start, stop, on_step=None):
    """Iterations ``start..stop-1`` of :func:`train_torch` ported to ``jopt.optim``;
    ``on_step(it, model, optimizer)`` runs at the top of each (to take a checkpoint)."""
    xs, ys = batches()
    losses, norms = [], []
    for it in range(start, stop):
        if on_step is not None:
            on_step(it, model, optimizer)
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        total = 0.0
        for micro in range(ACCUM):
            loss = optimizer.backward(
                micro_loss, model, xs[it * ACCUM + micro], ys[it * ACCUM + micro]
            )
            total += float(loss)
        norms.append(float(jopt.optim.clip_grad_norm_(optimizer, 1.0)))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total)
    return losses, norms


def copy_state_dict(sd):
    """A state dict detached from the optimizer's buffers (which later steps donate)."""
    return {
        "state": {i: {k: np.array(v) for k, v in s.items()} for i, s in sd["state"].items()},
        "param_groups": copy.deepcopy(sd["param_groups"]),
    }
