"""L-BFGS, ``torch.optim.LBFGS``: torch's whole step as one state machine, over the memory of
:mod:`~jopt.transforms.lbfgs_memory` and the line-search pieces of
:mod:`~jopt.transforms.line_search`.

One torch ``step`` evaluates the function several times, so the step is written as a machine
that is handed one evaluation at a time: :meth:`LbfgsMachine.start` makes a :class:`LbfgsRun`
whose ``x_eval`` is where the function is wanted; :meth:`LbfgsMachine.tick` takes the loss and
gradient there and runs torch's logic (history update, direction, step length, line-search
bracketing and zoom, stopping rules) up to the next point it needs, or to the end of the step
(``run.done``). Every decision lives once, here, in pure jittable code:

- :func:`run_lbfgs` drives it with a ``lax.while_loop`` around an evaluation function: the
  whole step in one compiled program (``jopt.lbfgs(...).step``);
- the facade (``jopt.optim.LBFGS``) drives it from Python, calling torch's closure between ticks.

The two drivers are the same four lines (evaluate at ``x_eval``, tick, until done). Work is on
one flat vector (torch flattens too); the history is a ring buffer of ``history_size`` slots and
a count, so the shapes never change and the step jits. Vectors and step lengths have the
parameters' dtype; losses are kept in the default float type (float64 in jax's x64 mode, as
torch keeps them as Python floats).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jopt.transforms.lbfgs_memory import (
    LbfgsState,
    lbfgs_direction,
    update_lbfgs_memory,
)
from jopt.transforms.line_search import (
    cubic_interpolate,
    max_like_python,
    min_like_python,
    strong_curvature,
    sufficient_decrease,
)

__all__ = ["LbfgsMachine", "LbfgsRun", "SearchState", "lbfgs_machine", "run_lbfgs"]

# Phases of a run. The first four wait for an evaluation at ``x_eval``.
FIRST, FIXED, BRACKET, ZOOM = 0, 1, 2, 3
ITERATE, CHECK, SEARCH, REFINE, FINISH = 4, 5, 6, 7, 8
DONE = 9


class SearchState(NamedTuple):
    """The strong-Wolfe search in progress: the trial ``t``, the previous trial, the last
    evaluation, the bracket (two points; a found point is a bracket of one, stored twice) and
    torch's counters."""

    t: jax.Array
    t_prev: jax.Array
    f_prev: jax.Array
    g_prev: jax.Array
    gtd_prev: jax.Array
    f_new: jax.Array
    g_new: jax.Array
    gtd_new: jax.Array
    bracket: jax.Array
    bracket_f: jax.Array
    bracket_g: jax.Array
    bracket_gtd: jax.Array
    low: jax.Array
    insuf_progress: jax.Array
    ls_iter: jax.Array
    done: jax.Array
    max_ls: jax.Array
    d_norm: jax.Array


class LbfgsRun(NamedTuple):
    """One step in progress: the state, the iterate ``x``, where the next evaluation is
    (``x_eval``), torch's per-step locals (``loss``, ``flat_grad`` as ``g``, ``gtd``, the
    iteration and evaluation counts) and the line search (None without one)."""

    state: LbfgsState
    x: jax.Array
    x_eval: jax.Array
    phase: jax.Array
    loss: jax.Array
    orig_loss: jax.Array
    g: jax.Array
    gtd: jax.Array
    iters: jax.Array
    evals: jax.Array
    ls_evals: jax.Array
    opt_cond: jax.Array
    search: SearchState | None

    @property
    def done(self) -> jax.Array:
        """Whether the step is over (then ``x`` is the new iterate)."""
        return self.phase == DONE


# ------------------------------------------------------------------------------------------
# torch's step as a machine
# ------------------------------------------------------------------------------------------


def _phase(cond: Any, a: Any, b: Any) -> jax.Array:
    """An int32 choice (a phase or a bracket index), whatever jax's integer width."""
    return jnp.where(cond, a, b).astype(jnp.int32)


def _where(cond: Any, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


class LbfgsMachine(NamedTuple):
    """``start(state, x) -> run`` and ``tick(run, loss, grad) -> run`` for one configuration."""

    start: Callable[[LbfgsState, jax.Array], LbfgsRun]
    tick: Callable[[LbfgsRun, Any, jax.Array], LbfgsRun]


def lbfgs_machine(
    lr: Any,
    max_iter: int,
    max_eval: int,
    tolerance_grad: Any,
    tolerance_change: Any,
    history_size: int,
    line_search: bool,
) -> LbfgsMachine:
    """torch's ``LBFGS.step`` as a machine fed one evaluation per :meth:`~LbfgsMachine.tick`.

    Per iteration: the direction ``d = -g`` at the first iteration ever, else the two-loop
    direction after the memory update; the step ``t = min(1, 1/|g|_1) lr`` at the first
    iteration, else ``lr``; stop if ``g.d > -tolerance_change``; then ``x += t d`` and one
    evaluation (none at the last iteration), or the strong-Wolfe search (``c1=1e-4``,
    ``c2=0.9``, at most ``max_eval - evals`` evaluations). The step ends after ``max_iter``
    iterations, ``max_eval`` evaluations, ``max|g| <= tolerance_grad``, ``max|t d| <=
    tolerance_change`` or a loss change below ``tolerance_change``.
    """

    def vector_dot(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.dot(a, b)

    def optimal(g: jax.Array) -> jax.Array:
        return jnp.max(jnp.abs(g)) <= tolerance_grad

    def count_evals(c: LbfgsRun, n: Any) -> LbfgsRun:
        st = c.state
        return c._replace(evals=c.evals + n, state=st._replace(func_evals=st.func_evals + n))

    def start(state: LbfgsState, x: jax.Array) -> LbfgsRun:
        dt, lt = x.dtype, state.prev_loss.dtype
        zero, int0 = jnp.zeros((), dt), jnp.zeros((), jnp.int32)
        search = None
        if line_search:
            pair = jnp.zeros((2,), dt)
            search = SearchState(
                t=zero, t_prev=zero, f_prev=jnp.zeros((), lt), g_prev=jnp.zeros_like(x),
                gtd_prev=zero, f_new=jnp.zeros((), lt), g_new=jnp.zeros_like(x),
                gtd_new=zero, bracket=pair, bracket_f=jnp.zeros((2,), lt),
                bracket_g=jnp.zeros((2, x.shape[0]), dt), bracket_gtd=pair, low=int0,
                insuf_progress=jnp.zeros((), bool), ls_iter=int0, done=jnp.zeros((), bool),
                max_ls=int0, d_norm=zero,
            )  # fmt: skip
        return LbfgsRun(
            state=state, x=x, x_eval=x, phase=jnp.asarray(FIRST, jnp.int32),
            loss=jnp.zeros((), lt), orig_loss=jnp.zeros((), lt), g=jnp.zeros_like(x), gtd=zero,
            iters=int0, evals=int0, ls_evals=int0, opt_cond=jnp.zeros((), bool), search=search,
        )  # fmt: skip

    # --- what an evaluation at x_eval does, by the phase that asked for it ----------------

    def first(c: LbfgsRun, f: jax.Array, g: jax.Array) -> LbfgsRun:
        c = count_evals(c._replace(loss=f, orig_loss=f, g=g, evals=jnp.zeros_like(c.evals)), 1)
        return c._replace(phase=_phase(optimal(g), DONE, ITERATE))

    def fixed(c: LbfgsRun, f: jax.Array, g: jax.Array) -> LbfgsRun:
        c = count_evals(c._replace(loss=f, g=g, opt_cond=optimal(g), ls_evals=jnp.ones_like(
            c.ls_evals)), 1)  # fmt: skip
        return c._replace(phase=jnp.asarray(CHECK, jnp.int32))

    def bracket_eval(c: LbfgsRun, f: jax.Array, g: jax.Array) -> LbfgsRun:
        s = c.search
        s = s._replace(
            f_new=f,
            g_new=g,
            gtd_new=vector_dot(g, c.state.d),
            ls_iter=s.ls_iter + (c.ls_evals > 0),  # torch counts from the second trial
        )
        return c._replace(search=s, ls_evals=c.ls_evals + 1, phase=jnp.asarray(SEARCH, jnp.int32))

    def zoom_eval(c: LbfgsRun, f: jax.Array, g: jax.Array) -> LbfgsRun:
        s = c.search
        gtd_new = vector_dot(g, c.state.d)
        low, high = s.low, 1 - s.low

        def put(arrays: tuple, at: Any, values: tuple) -> tuple:
            return tuple(a.at[at].set(v) for a, v in zip(arrays, values))

        arrays = (s.bracket, s.bracket_f, s.bracket_g, s.bracket_gtd)
        new = (s.t, f, g, gtd_new)
        # Armijo fails or no lower than the low end: the trial is the new high end.
        worse = ~sufficient_decrease(f, c.loss, s.t, c.gtd) | (f >= s.bracket_f[low])
        as_high = put(arrays, high, new)
        high_low = _phase(as_high[1][0] <= as_high[1][1], 0, 1)
        # Otherwise it is the new low end (the old low becomes the high end if the slope
        # points past it), and the search is done if it meets the curvature condition.
        found = strong_curvature(gtd_new, c.gtd)
        flip = ~found & (gtd_new * (s.bracket[high] - s.bracket[low]) >= 0)
        flipped = put(arrays, high, tuple(a[low] for a in arrays))
        as_low = put(_where(flip, flipped, arrays), low, new)
        bracket, bracket_f, bracket_g, bracket_gtd = _where(worse, as_high, as_low)
        s = s._replace(
            f_new=f, g_new=g, gtd_new=gtd_new, bracket=bracket, bracket_f=bracket_f,
            bracket_g=bracket_g, bracket_gtd=bracket_gtd, low=jnp.where(worse, high_low, low),
            done=s.done | (~worse & found), ls_iter=s.ls_iter + 1,
        )  # fmt: skip
        return c._replace(search=s, ls_evals=c.ls_evals + 1, phase=jnp.asarray(REFINE, jnp.int32))

    # --- what runs between evaluations --------------------------------------------------

    def iterate(c: LbfgsRun) -> LbfgsRun:
        st = c.state
        n_iter = st.n_iter + 1
        initial = n_iter == 1
        dt = c.x.dtype

        def fresh(st: LbfgsState) -> LbfgsState:
            int0 = jnp.zeros_like(st.count)
            return st._replace(d=-c.g, count=int0, head=int0, H_diag=jnp.ones_like(st.H_diag))

        def later(st: LbfgsState) -> LbfgsState:
            st = update_lbfgs_memory(st, c.g, history_size)
            d, al = lbfgs_direction(st, c.g)
            return st._replace(d=d, al=al)

        st = lax.cond(initial, fresh, later, st)
        scale = min_like_python(jnp.ones((), dt), 1.0 / jnp.sum(jnp.abs(c.g)))
        t = jnp.where(initial, scale * lr, lr).astype(dt)
        st = st._replace(n_iter=n_iter, prev_flat_grad=c.g, prev_loss=c.loss, t=t)
        gtd = vector_dot(c.g, st.d)
        stop = gtd > -tolerance_change
        iters = c.iters + 1
        c = c._replace(state=st, gtd=gtd, iters=iters, ls_evals=jnp.zeros_like(c.ls_evals))
        moved = c.x + t * st.d
        if not line_search:
            phase = _phase(stop, DONE, _phase(iters == max_iter, CHECK, FIXED))
            return c._replace(x=jnp.where(stop, c.x, moved), x_eval=moved, phase=phase)
        s = c.search._replace(
            t=t, t_prev=jnp.zeros_like(t), f_prev=c.loss, g_prev=c.g, gtd_prev=gtd,
            ls_iter=jnp.zeros_like(c.iters), done=jnp.zeros((), bool),
            insuf_progress=jnp.zeros((), bool), max_ls=max_eval - c.evals,
            d_norm=jnp.max(jnp.abs(st.d)),
        )  # fmt: skip
        return c._replace(search=s, x_eval=moved, phase=_phase(stop, DONE, BRACKET))

    def check(c: LbfgsRun) -> LbfgsRun:
        st = c.state
        stop = (
            (c.iters == max_iter)
            | (c.evals >= max_eval)
            | c.opt_cond
            | (jnp.max(jnp.abs(st.d * st.t)) <= tolerance_change)
            | (jnp.abs(c.loss - st.prev_loss) < tolerance_change)
        )
        return c._replace(phase=_phase(stop, DONE, ITERATE))

    def search(c: LbfgsRun) -> LbfgsRun:
        """The bracketing loop of the strong-Wolfe search, after a trial at ``s.t``."""
        s = c.search
        exhausted = s.ls_iter >= s.max_ls
        fails = ~sufficient_decrease(s.f_new, c.loss, s.t, c.gtd) | (
            (s.ls_iter > 1) & (s.f_new >= s.f_prev)
        )
        found = strong_curvature(s.gtd_new, c.gtd)
        bracketed = ~exhausted & (fails | (~found & (s.gtd_new >= 0)))
        found = ~exhausted & ~fails & found
        go_on = ~(exhausted | bracketed | found)
        zero = jnp.zeros_like(s.t)
        pair = jnp.stack
        bracket = jnp.where(
            exhausted, pair([zero, s.t]), jnp.where(bracketed, pair([s.t_prev, s.t]), s.t)
        )
        f_start = jnp.where(exhausted, c.loss, s.f_prev)
        bracket_f = jnp.where(found, s.f_new, pair([f_start, s.f_new]))
        g_start = jnp.where(exhausted, c.g, s.g_prev)
        bracket_g = jnp.where(found, s.g_new, pair([g_start, s.g_new]))
        stopped = s._replace(
            bracket=bracket,
            bracket_f=bracket_f,
            bracket_g=bracket_g,
            bracket_gtd=pair([s.gtd_prev, s.gtd_new]),
            low=_phase(bracket_f[0] <= bracket_f[1], 0, 1),
            done=found,
        )
        t_next = cubic_interpolate(
            s.t_prev, s.f_prev, s.gtd_prev, s.t, s.f_new, s.gtd_new,
            bounds=(s.t + 0.01 * (s.t - s.t_prev), s.t * 10),
        ).astype(s.t.dtype)  # fmt: skip
        onward = s._replace(
            t=t_next, t_prev=s.t, f_prev=s.f_new, g_prev=s.g_new, gtd_prev=s.gtd_new
        )
        return c._replace(
            search=_where(go_on, onward, stopped),
            x_eval=jnp.where(go_on, c.x + t_next * c.state.d, c.x_eval),
            phase=_phase(go_on, BRACKET, REFINE),
        )

    def refine(c: LbfgsRun) -> LbfgsRun:
        """The zoom loop: the next trial inside the bracket, kept off its ends."""
        s = c.search
        b0, b1 = s.bracket[0], s.bracket[1]
        stop = s.done | (s.ls_iter >= s.max_ls) | (jnp.abs(b1 - b0) * s.d_norm < tolerance_change)
        t = cubic_interpolate(
            b0, s.bracket_f[0], s.bracket_gtd[0], b1, s.bracket_f[1], s.bracket_gtd[1]
        ).astype(s.t.dtype)
        hi, lo = max_like_python(b0, b1), min_like_python(b0, b1)
        eps = 0.1 * (hi - lo)
        near = min_like_python(hi - t, t - lo) < eps
        off_edge = s.insuf_progress | (t >= hi) | (t <= lo)
        pulled = jnp.where(jnp.abs(t - hi) < jnp.abs(t - lo), hi - eps, lo + eps)
        t = jnp.where(near & off_edge, pulled, t)
        s = s._replace(t=t, insuf_progress=near & ~off_edge)
        return c._replace(
            search=_where(stop, c.search, s),
            x_eval=jnp.where(stop, c.x_eval, c.x + t * c.state.d),
            phase=_phase(stop, FINISH, ZOOM),
        )

    def finish(c: LbfgsRun) -> LbfgsRun:
        s = c.search
        t, g = s.bracket[s.low], s.bracket_g[s.low]
        c = c._replace(
            x=c.x + t * c.state.d,
            loss=s.bracket_f[s.low],
            g=g,
            opt_cond=optimal(g),
            state=c.state._replace(t=t),
        )
        return count_evals(c, c.ls_evals)._replace(phase=jnp.asarray(CHECK, jnp.int32))

    consumers = [first, fixed] + ([bracket_eval, zoom_eval] if line_search else [])
    steps = [iterate, check] + ([search, refine, finish] if line_search else [])

    def tick(c: LbfgsRun, loss: Any, grad: jax.Array) -> LbfgsRun:
        f = jnp.asarray(loss).astype(c.loss.dtype).reshape(())
        g = jnp.asarray(grad).astype(c.x.dtype)
        c = lax.switch(c.phase, consumers, c, f, g)
        return lax.while_loop(
            lambda c: (c.phase >= ITERATE) & (c.phase != DONE),
            lambda c: lax.switch(c.phase - ITERATE, steps, c),
            c,
        )

    return LbfgsMachine(start, tick)


def run_lbfgs(
    machine: LbfgsMachine,
    evaluate: Callable[[jax.Array, Any], tuple[Any, jax.Array, Any, Any]],
    x: jax.Array,
    state: LbfgsState,
    carry: Any = None,
) -> tuple[jax.Array, LbfgsState, Any, Any, Any]:
    """One whole step in a ``lax.while_loop``: ``(x, state, loss, aux, carry)``.

    ``evaluate(x, carry) -> (loss, grad, carry, aux)`` is called at each point the machine
    asks for; ``carry`` threads through every call (a module's batch statistics), and the loss
    and ``aux`` returned are those of the first evaluation, as torch's step returns the first
    closure's loss.
    """
    loss, grad, carry, aux = evaluate(x, carry)
    run = machine.tick(machine.start(state, x), loss, grad)

    def body(inputs: tuple[LbfgsRun, Any]) -> tuple[LbfgsRun, Any]:
        run, carry = inputs
        f, g, carry, _ = evaluate(run.x_eval, carry)
        return machine.tick(run, f, g), carry

    run, carry = lax.while_loop(lambda inputs: ~inputs[0].done, body, (run, carry))
    return run.x, run.state, loss, aux, carry
