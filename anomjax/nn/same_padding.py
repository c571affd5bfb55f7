"""TensorFlow "SAME" padding and the strided windows of a padded image, for convolutions
written as sums or products of shifted views (:mod:`anomjax.nn.depthwise`,
:mod:`anomjax.nn.patch_conv`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``"SAME"`` padding ``(before, after)`` of one spatial axis (extra after)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def strided_window(xp: jax.Array, dy: int, dx: int, out_hw: tuple[int, int],
                   strides: tuple[int, int]) -> jax.Array:
    """``xp[..., s*i + dy, s*j + dx, :]`` for ``i, j < out_hw`` (leading axes kept)."""
    (ho, wo), (sh, sw) = out_hw, strides
    return xp[..., dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw, :]


def pad_same(x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int]
             ) -> tuple[jax.Array, tuple[int, int], tuple[int, int]]:
    """``x`` padded for a "SAME" convolution, the output size and the (top, left) padding."""
    (kh, kw), (sh, sw) = kernel_hw, strides
    _, h, w, _ = x.shape
    (top, bottom), (left, right) = same_pads(h, kh, sh), same_pads(w, kw, sw)
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return xp, (-(-h // sh), -(-w // sw)), (top, left)
