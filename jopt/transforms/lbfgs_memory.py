"""L-BFGS's memory, as ``torch.optim.LBFGS`` keeps it: the curvature pairs, their update and
the two-loop recursion that turns them into a direction ``d = -H g``.

The history is a ring buffer of ``history_size`` slots and a count, so the shapes never change
and a step jits; :mod:`jopt.transforms.lbfgs` drives it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["MIN_CURVATURE", "LbfgsState", "init_lbfgs_state", "lbfgs_direction",
           "update_lbfgs_memory"]

MIN_CURVATURE = 1e-10
"""A pair (y, s) enters the history only when ``y . s`` exceeds this (torch's rule)."""


class LbfgsState(NamedTuple):
    """What persists between steps, under torch's names.

    ``old_dirs`` (the ``y = g_k - g_{k-1}``), ``old_stps`` (the ``s = t d``) and ``ro``
    (``1 / y.s``) are ring buffers of ``history_size`` rows; the ``count`` newest are in use,
    the next one is written at ``head``. ``al`` holds the last two-loop coefficients by
    history position (oldest first), as torch's ``state["al"]``.
    """

    d: jax.Array
    t: jax.Array
    old_dirs: jax.Array
    old_stps: jax.Array
    ro: jax.Array
    al: jax.Array
    H_diag: jax.Array
    prev_flat_grad: jax.Array
    prev_loss: jax.Array
    n_iter: jax.Array
    func_evals: jax.Array
    count: jax.Array
    head: jax.Array

    def history(self) -> jax.Array:
        """The ring-buffer slots of the history in use, oldest first (host-side helper)."""
        m = self.ro.shape[0]
        k = int(self.count)
        return (int(self.head) - k + jnp.arange(k)) % max(m, 1)


def init_lbfgs_state(size: int, dtype: Any, history_size: int) -> LbfgsState:
    """A fresh state over a flat vector of ``size`` entries (torch has none before a step)."""
    m = max(int(history_size), 1)

    def vector() -> jax.Array:  # distinct buffers, so that the state can be donated
        return jnp.zeros((size,), dtype)

    def int0() -> jax.Array:
        return jnp.zeros((), jnp.int32)

    return LbfgsState(
        d=vector(),
        t=jnp.zeros((), dtype),
        old_dirs=jnp.zeros((m, size), dtype),
        old_stps=jnp.zeros((m, size), dtype),
        ro=jnp.zeros((m,), dtype),
        al=jnp.zeros((m,), dtype),
        H_diag=jnp.ones((), dtype),
        prev_flat_grad=vector(),
        prev_loss=jnp.zeros((), jnp.result_type(float)),
        n_iter=int0(),
        func_evals=int0(),
        count=int0(),
        head=int0(),
    )


def update_lbfgs_memory(state: LbfgsState, g: jax.Array, history_size: int) -> LbfgsState:
    """torch's memory update: with ``y = g - prev_flat_grad`` and ``s = t d``, if ``y.s >
    1e-10`` the pair enters the history (the oldest leaves once ``history_size`` are kept),
    ``ro = 1 / y.s`` and ``H_diag = y.s / y.y``; otherwise nothing changes."""
    y = g - state.prev_flat_grad
    s = state.d * state.t
    ys = jnp.dot(y, s)
    if history_size < 1:  # nothing is ever kept (torch fails on a history of 0)
        return state

    def push(st: LbfgsState) -> LbfgsState:
        m = st.ro.shape[0]
        slot = st.head
        return st._replace(
            old_dirs=st.old_dirs.at[slot].set(y),
            old_stps=st.old_stps.at[slot].set(s),
            ro=st.ro.at[slot].set(1.0 / ys),
            H_diag=(ys / jnp.dot(y, y)).astype(st.H_diag.dtype),
            head=(slot + 1) % m,
            count=jnp.minimum(st.count + 1, m),
        )

    return lax.cond(ys > MIN_CURVATURE, push, lambda st: st, state)


def lbfgs_direction(state: LbfgsState, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two-loop recursion: ``d = -H g`` with the history's inverse-Hessian estimate (scaled
    by ``H_diag``), and the coefficients ``al`` by history position, as torch computes them."""
    m = state.ro.shape[0]
    k = state.count
    first = state.head + m - k

    def backward(j: Any, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        q, al = carry
        i = k - 1 - j
        slot = (first + i) % m
        a = jnp.dot(state.old_stps[slot], q) * state.ro[slot]
        return q - a * state.old_dirs[slot], al.at[i].set(a)

    q, al = lax.fori_loop(0, k, backward, (-g, state.al))
    r = q * state.H_diag

    def forward(i: Any, r: jax.Array) -> jax.Array:
        slot = (first + i) % m
        be = jnp.dot(state.old_dirs[slot], r) * state.ro[slot]
        return r + (al[i] - be) * state.old_stps[slot]

    return lax.fori_loop(0, k, forward, r), al
