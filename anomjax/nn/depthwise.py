"""Depthwise TF-"SAME" convolution as a sum of shifted copies, with a hand-written gradient.

XLA's CPU backend runs grouped convolutions (``feature_group_count = C``) several times slower
than the same arithmetic written as ``k * k`` shifted, per-channel scaled views of the padded
input, and the automatic gradient of those views (one pad per view) is slow again (measured in
STPM's training step: ``experiments/method_notes.md#nn``). Other backends keep the convolution
primitive (:func:`anomjax.backbones.efficientnet_lite.depthwise_conv`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from anomjax.nn.same_padding import pad_same, strided_window


def _shifted_sum(xp: jax.Array, kernel: jax.Array, out_hw: tuple[int, int],
                 strides: tuple[int, int]) -> jax.Array:
    """``sum_{dy,dx} xp[:, s*i + dy, s*j + dx, :] * kernel[dy, dx, 0]`` for ``i, j < out_hw``."""
    kh, kw = kernel.shape[:2]
    out = None
    for dy in range(kh):
        for dx in range(kw):
            term = strided_window(xp, dy, dx, out_hw, strides) * kernel[dy, dx, 0]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array,
                           strides: tuple[int, int]) -> jax.Array:
    """Depthwise ``"SAME"`` convolution ``x [B, H, W, C]`` by ``kernel [kh, kw, 1, C]`` ->
    ``[B, ceil(H/sh), ceil(W/sw), C]``; the numbers of ``lax.conv_general_dilated(...,
    feature_group_count=C)`` up to rounding."""
    return _forward(x, kernel, strides)[0]


def _forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    xp, out_hw, _ = pad_same(x, kernel.shape[:2], strides)
    return _shifted_sum(xp, kernel, out_hw, strides), (x, kernel)


def _backward(strides: tuple[int, int], res: tuple[jax.Array, jax.Array],
              g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    _, h, w, _ = x.shape
    xp, (ho, wo), (top, left) = pad_same(x, (kh, kw), strides)
    # Input gradient: the cotangent dilated by the strides, fully padded, correlated with the
    # flipped kernel; rows/cols of the padded input past the last window get zero.
    zero = jnp.zeros((), g.dtype)
    gd = jax.lax.pad(g, zero, ((0, 0, 0), (kh - 1, kh - 1, sh - 1), (kw - 1, kw - 1, sw - 1),
                               (0, 0, 0)))
    span_h, span_w = sh * (ho - 1) + kh, sw * (wo - 1) + kw
    dxp = _shifted_sum(gd, kernel[::-1, ::-1], (span_h, span_w), (1, 1))
    dxp = jnp.pad(dxp, ((0, 0), (0, xp.shape[1] - span_h), (0, xp.shape[2] - span_w), (0, 0)))
    dx = dxp[:, top:top + h, left:left + w, :]

    # Kernel gradient: k * k reductions per image, one image at a time, so that each image's
    # input and cotangent are re-read from cache rather than from memory.
    def per_image(pair: tuple[jax.Array, jax.Array]) -> jax.Array:
        xpi, gi = pair
        return jnp.stack([
            jnp.sum((strided_window(xpi, dy, dx_, (ho, wo), strides) * gi).astype(jnp.float32),
                    axis=(0, 1))
            for dy in range(kh) for dx_ in range(kw)])

    dk = jnp.sum(jax.lax.map(per_image, (xp, g)), axis=0).reshape(kernel.shape)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_forward, _backward)
