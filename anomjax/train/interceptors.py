"""Flax method interceptors that change how a backbone's layers run, without editing it.

The shared backbones (``anomjax.backbones``) build every ``nn.BatchNorm`` frozen
(``use_running_average=True``): right for a pretrained feature extractor, wrong for a
network trained from scratch (the STPM student), which must normalise with the statistics of
the current batch and update running statistics for test time, as PyTorch's ``train()``
mode does. And XLA's CPU backend runs depthwise convolutions (``feature_group_count`` equal
to the channels) and their gradients far slower than the same sum of shifted, scaled copies
of the input. :func:`apply_with` runs a module with either change, through
``nn.intercept_methods``; both are exact reformulations (up to float rounding) of the
layer, not approximations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Interceptor = Callable[..., Any]


def batch_norm_in_train_mode(momentum: float = 0.9) -> Interceptor:
    """``nn.BatchNorm`` normalises with batch statistics and updates its running ones.

    Running statistics follow ``new = momentum * old + (1 - momentum) * batch`` (Flax's
    convention: ``momentum=0.9`` is PyTorch's default ``momentum=0.1``), with the unbiased
    variance as PyTorch keeps it, when the ``batch_stats`` collection is mutable. Statistics
    are over every axis but the channels of the global batch, so under a data-parallel mesh
    they are those of the whole batch (synchronised batch norm).
    """

    def intercept(next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                  context: Any) -> Any:
        module = context.module
        if (not isinstance(module, nn.BatchNorm) or context.method_name != "__call__"
                or not module.has_variable("batch_stats", "mean")):
            return next_fun(*args, **kwargs)
        x = args[0]
        axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axes)
        var = jnp.mean(jnp.square(x32 - mean), axes)
        y = (x32 - mean) * jax.lax.rsqrt(var + module.epsilon)
        if module.use_scale:
            y = y * module.get_variable("params", "scale")
        if module.use_bias:
            y = y + module.get_variable("params", "bias")
        if module.is_mutable_collection("batch_stats"):
            n = x.size // x.shape[-1]
            unbiased = var * n / max(n - 1, 1)
            old_mean = module.get_variable("batch_stats", "mean")
            old_var = module.get_variable("batch_stats", "var")
            module.put_variable("batch_stats", "mean", momentum * old_mean
                                + (1 - momentum) * jax.lax.stop_gradient(mean))
            module.put_variable("batch_stats", "var", momentum * old_var
                                + (1 - momentum) * jax.lax.stop_gradient(unbiased))
        return y.astype(x.dtype)

    return intercept


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow / Flax ``"SAME"`` padding ``(before, after)`` of one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _shifted_sum(xp: jax.Array, kernel: jax.Array, out_hw: tuple[int, int],
                 strides: tuple[int, int]) -> jax.Array:
    """``sum_{dy,dx} xp[:, s*i + dy, s*j + dx, :] * kernel[dy, dx, 0]`` for ``i, j < out_hw``."""
    kh, kw = kernel.shape[:2]
    (ho, wo), (sh, sw) = out_hw, strides
    out = None
    for dy in range(kh):
        for dx in range(kw):
            rows = slice(dy, dy + sh * (ho - 1) + 1, sh)
            cols = slice(dx, dx + sw * (wo - 1) + 1, sw)
            term = xp[:, rows, cols, :] * kernel[dy, dx, 0]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array,
                           strides: tuple[int, int]) -> jax.Array:
    """Depthwise ``"SAME"`` convolution as a sum of shifted copies.

    ``x [B, H, W, C]``, ``kernel [kh, kw, 1, C]`` -> ``[B, ceil(H/sh), ceil(W/sw), C]``; the same
    numbers as ``lax.conv_general_dilated(..., feature_group_count=C)`` up to rounding. Its
    gradient is written out too (the input gradient as one shifted sum over the cotangent,
    the kernel gradient as one reduction per tap), which XLA's CPU backend runs much faster
    than the transposes of the slices.
    """
    return _depthwise_forward(x, kernel, strides)[0]


def _depthwise_forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]
                       ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    (ph0, ph1), (pw0, pw1) = _same_pads(h, kh, strides[0]), _same_pads(w, kw, strides[1])
    xp = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    out_hw = (-(-h // strides[0]), -(-w // strides[1]))
    return _shifted_sum(xp, kernel, out_hw, strides), (x, kernel)


def _depthwise_backward(strides: tuple[int, int], res: tuple[jax.Array, jax.Array],
                        g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    _, h, w, _ = x.shape
    (ph0, ph1), (pw0, pw1) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
    _, ho, wo, _ = g.shape
    # Input gradient: the cotangent dilated by the strides, fully padded, correlated with the
    # flipped kernel; rows/cols of the padded input past the last window get zero.
    zero = jnp.zeros((), g.dtype)
    gd = jax.lax.pad(g, zero, ((0, 0, 0), (kh - 1, kh - 1, sh - 1), (kw - 1, kw - 1, sw - 1),
                               (0, 0, 0)))
    hp, wp = h + ph0 + ph1, w + pw0 + pw1
    span_h, span_w = sh * (ho - 1) + kh, sw * (wo - 1) + kw
    dxp = _shifted_sum(gd, kernel[::-1, ::-1], (span_h, span_w), (1, 1))
    dxp = jnp.pad(dxp, ((0, 0), (0, hp - span_h), (0, wp - span_w), (0, 0)))
    dx = dxp[:, ph0:ph0 + h, pw0:pw0 + w, :]
    # Kernel gradient: one reduction over batch and positions per tap.
    xp = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    taps = []
    for dy in range(kh):
        for dx_ in range(kw):
            window = xp[:, dy:dy + sh * (ho - 1) + 1:sh, dx_:dx_ + sw * (wo - 1) + 1:sw, :]
            taps.append(jnp.sum((window * g).astype(jnp.float32), axis=(0, 1, 2)))
    dk = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
    return dx.astype(x.dtype), dk


depthwise_conv_shifted.defvjp(_depthwise_forward, _depthwise_backward)


def depthwise_conv_as_shifts() -> Interceptor:
    """Depthwise ``nn.Conv`` layers (SAME padding, no dilation) run as shifted sums."""

    def intercept(next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                  context: Any) -> Any:
        module = context.module
        if (not isinstance(module, nn.Conv) or context.method_name != "__call__"
                or not module.has_variable("params", "kernel")):
            return next_fun(*args, **kwargs)
        x = args[0]
        kernel = module.get_variable("params", "kernel")
        strides = module.strides or (1,) * (kernel.ndim - 2)
        strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        dilation = module.kernel_dilation or 1
        if (x.ndim != 4 or kernel.ndim != 4 or module.feature_group_count != x.shape[-1]
                or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]
                or module.padding != "SAME" or dilation not in (1, (1, 1))
                or module.input_dilation not in (None, 1, (1, 1))):
            return next_fun(*args, **kwargs)
        dtype = jnp.result_type(x, kernel) if module.dtype is None else module.dtype
        y = depthwise_conv_shifted(x.astype(dtype), kernel.astype(dtype), strides)
        if module.use_bias:
            y = y + module.get_variable("params", "bias").astype(dtype)
        return y

    return intercept


def apply_with(module: nn.Module, variables: dict[str, Any], *args: Any,
               interceptors: Sequence[Interceptor] = (), mutable: Any = False,
               **kwargs: Any) -> Any:
    """``module.apply(variables, *args, mutable=mutable, **kwargs)`` under ``interceptors``.

    Call it inside a ``jax.jit``-traced function (or un-jitted): the interceptors act while
    the module is traced.
    """
    if not interceptors:
        return module.apply(variables, *args, mutable=mutable, **kwargs)
    with nn.intercept_methods(interceptors[0]):
        return apply_with(module, variables, *args, interceptors=interceptors[1:],
                          mutable=mutable, **kwargs)
