"""Dynamic int8 quantization of nnx ``Linear`` layers, as torch's ``quantize_dynamic`` does it.

``quantize_dynamic(model)`` is ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear},
dtype=torch.qint8)`` on torch's x86 engine (fbgemm), rule for rule:

- **weights**: int8, symmetric, zero point 0, one scale per tensor (``per_channel=True``: per
  output unit): ``scale = max(amax / 127.5, eps32)`` (torch's ``MinMaxObserver``: the range
  ``[-128, 127]`` halved) and ``q = clip(round(w * (1 / scale)), -128, 127)``, rounding half
  to even;
- **activations**, at every call, over the whole input: asymmetric 8-bit with the range cut
  to 7 bits (fbgemm's ``reduce_range``, which keeps its u8 x s8 pair sums from saturating):
  torch's ``ChooseQuantizationParams(min(x), max(x), 0, 127)`` — the range widened to hold 0,
  ``scale = (max - min) / 127`` (0.1 if that is 0, at least 6.1e-5), the zero point from the
  end with the smaller error, rounded and clipped — and ``q = round(zp + x * (1 / scale))``
  clipped to ``[0, 127]``;
- **matmul**: ``q - zp`` lies in ``[-127, 127]``, so jopt stores it as int8 and multiplies
  int8 x int8 -> int32 (``lax.dot_general(..., preferred_element_type=int32)``), which is
  fbgemm's integer sum exactly; ``y = acc * x_scale * w_scale + bias`` in float32 (the bias is
  not quantized).

Where jopt differs: torch computes the activation scale and zero point in double and rounds
the scale to float32; jopt computes them in JAX's default precision (float32 unless x64 is on),
so the scale can be one float32 ulp off, and a zero point or an entry exactly at a rounding
boundary one step off: an output then differs by ``x_scale * w_scale * |q_w|`` at most (one
activation quantization step, through one weight). ``activation="symmetric"`` instead uses
all 8 bits (``scale = amax / 127``, zero point 0): not torch's, and twice its resolution on
inputs of both signs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "QuantizedLinear",
    "QuantizedValue",
    "activation_qparams",
    "model_bytes",
    "quantize_dynamic",
    "quantize_weight",
]

SMALL_SCALE = np.float32(6.1e-5)  # torch's SMALL_SCALE_THRESHOLD
EPS32 = np.float32(np.finfo(np.float32).eps)  # torch's observer eps


def _div(a: Any, b: Any) -> jax.Array:
    """``a / b`` rounded as IEEE (and torch) do. XLA rewrites a division by a constant or a
    broadcast scalar into a product with its reciprocal, which is one ulp off for most
    inputs; a divisor it cannot see through keeps the true division."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.broadcast_to(jnp.asarray(b, jnp.float32), jnp.broadcast_shapes(a.shape, jnp.shape(b)))
    return a / jax.lax.optimization_barrier(b)


class QuantizedValue(nnx.Variable):
    """A quantized model's fixed arrays (int8 weights, their scales, the float bias): not an
    ``nnx.Param``, so no optimizer trains them."""


def quantize_weight(w: jax.Array, axis: int | None = None) -> tuple[jax.Array, jax.Array]:
    """``(q, scale)``: int8 symmetric quantization of ``w``, one scale per tensor or, with
    ``axis``, one per index along ``axis``. torch's ``MinMaxObserver(dtype=qint8,
    qscheme=per_tensor_symmetric)`` (``PerChannelMinMaxObserver`` with ``axis``) and
    ``quantize_per_tensor`` / ``quantize_per_channel``."""
    w = jnp.asarray(w, jnp.float32)
    if axis is None:
        amax = jnp.max(jnp.abs(w), keepdims=True).reshape(1)
        scale = jnp.maximum(_div(amax, 127.5), EPS32)
        inv = _div(1, scale)[0]
    else:
        axis = axis % w.ndim
        others = tuple(i for i in range(w.ndim) if i != axis)
        amax = jnp.max(jnp.abs(w), axis=others)
        scale = jnp.maximum(_div(amax, 127.5), EPS32)
        inv = jnp.expand_dims(_div(1, scale), others)
    q = jnp.clip(jnp.round(w * inv), -128, 127).astype(jnp.int8)
    return q, scale


def activation_qparams(x: jax.Array, qmin: int = 0, qmax: int = 127) -> tuple[jax.Array, Any]:
    """``(scale, zero_point)`` of ``x``: torch's ``ChooseQuantizationParams(min(x), max(x),
    qmin, qmax)`` (``torch._choose_qparams_per_tensor(x, reduce_range=True)`` for the
    default 7-bit range), in JAX's precision."""
    x = jnp.asarray(x, jnp.float32)
    levels = np.float32(qmax - qmin)
    lo = jnp.minimum(jnp.min(x), 0.0)
    hi = jnp.maximum(jnp.max(x), 0.0)
    scale = _div(hi - lo, levels)
    scale = jnp.where((scale == 0) | jnp.isinf(_div(1, scale)), np.float32(0.1), scale)
    small = scale < SMALL_SCALE
    amplifier = _div(SMALL_SCALE, scale)
    lo_small = jnp.where(lo == 0, lo, jnp.where(hi == 0, -SMALL_SCALE * levels, lo * amplifier))
    hi_small = jnp.where(lo == 0, SMALL_SCALE * levels, jnp.where(hi == 0, hi, hi * amplifier))
    lo, hi = jnp.where(small, lo_small, lo), jnp.where(small, hi_small, hi)
    scale = jnp.where(small, SMALL_SCALE, scale)
    lo_q, hi_q = _div(lo, scale), _div(hi, scale)
    from_min, from_max = qmin - lo_q, qmax - hi_q
    error_min = abs(qmin) - jnp.abs(lo_q)
    error_max = abs(qmax) - jnp.abs(hi_q)
    initial = jnp.where(error_min < error_max, from_min, from_max)
    zero_point = jnp.clip(jnp.round(initial), qmin, qmax).astype(jnp.int32)
    return scale, zero_point


def _quantize_activation(x: jax.Array, scheme: str) -> tuple[jax.Array, jax.Array]:
    """``(q - zero_point as int8, scale)`` of one input batch."""
    if scheme == "symmetric":
        scale = jnp.maximum(_div(jnp.max(jnp.abs(x)), 127), SMALL_SCALE)
        return jnp.clip(jnp.round(x * _div(1, scale)), -127, 127).astype(jnp.int8), scale
    scale, zero_point = activation_qparams(x)
    q = jnp.clip(jnp.round(zero_point.astype(jnp.float32) + x * _div(1, scale)), 0, 127)
    return (q.astype(jnp.int32) - zero_point).astype(jnp.int8), scale


class QuantizedLinear(nnx.Module):
    """An ``nnx.Linear`` with int8 weights and activations quantized at each call: torch's
    ``torch.ao.nn.quantized.dynamic.Linear``. ``kernel`` is ``(in, out)`` int8, ``scale`` one
    float32 per tensor or per output unit, ``bias`` float32 (or ``None``)."""

    def __init__(self, linear: nnx.Linear, per_channel: bool = False,
                 activation: str = "torch") -> None:
        if activation not in ("torch", "symmetric"):
            raise ValueError(f"activation must be 'torch' or 'symmetric', got {activation!r}")
        q, scale = quantize_weight(linear.kernel[...], axis=-1 if per_channel else None)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = QuantizedValue(q)
        self.scale = QuantizedValue(scale)
        bias = linear.bias
        self.bias = None if bias is None else QuantizedValue(jnp.asarray(bias[...], jnp.float32))
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = jnp.asarray(x, jnp.float32)
        qx, x_scale = _quantize_activation(x, self.activation)
        acc = jax.lax.dot_general(qx, self.kernel[...], (((x.ndim - 1,), (0,)), ((), ())),
                                  preferred_element_type=jnp.int32)
        y = acc.astype(jnp.float32) * x_scale * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(dtype)


def quantize_dynamic(model: nnx.Module, per_channel: bool = False,
                     activation: str = "torch") -> nnx.Module:
    """A copy of ``model`` with every ``nnx.Linear`` a :class:`QuantizedLinear`.

    torch's ``quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``; ``per_channel=True``
    is torch's ``per_channel_dynamic_qconfig``. The model is not changed (torch's default
    ``inplace=False``). ``activation="symmetric"`` is jopt's variant (see the module notes).
    """
    if isinstance(model, nnx.Linear):
        return QuantizedLinear(model, per_channel, activation)
    copy = nnx.clone(model)
    targets = [(path, m) for path, m in nnx.iter_graph(copy)
               if isinstance(m, nnx.Linear) and path]
    for path, linear in targets:
        parent = copy
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        replacement = QuantizedLinear(linear, per_channel, activation)
        if isinstance(path[-1], int):
            parent[path[-1]] = replacement
        else:
            setattr(parent, path[-1], replacement)
    return copy


def model_bytes(model: nnx.Module) -> int:
    """The bytes of the arrays a model holds (every ``nnx.Variable``: parameters, quantized
    weights and scales, statistics): what saving its state would store, without a format's
    overhead. torch: the sizes of ``state_dict()``'s tensors."""
    leaves = jax.tree.leaves(nnx.state(model))
    return int(sum(np.asarray(leaf).nbytes for leaf in leaves
                   if not jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key)))
