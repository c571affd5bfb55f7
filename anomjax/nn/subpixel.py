"""Strided transposed convolutions as one stride-1 convolution and a depth-to-space shuffle.

``lax.conv_transpose`` with stride ``s`` is a convolution of the input dilated by ``s``. Its
forward pass is fast on XLA:CPU, but the gradient with respect to its kernel is a convolution
with a dilated operand that XLA:CPU runs on a slow generic path, many times slower than the
strided convolution it mirrors (measured on a DCGAN layer: ``experiments/method_notes.md#nn``).

The same map, exactly: output pixel ``(s i + a, s j + b)`` only ever sees the kernel taps
``k`` with ``(a + k - pad) % s == 0``, at input offset ``(a + k - pad) // s``. Gathering
those taps per output phase ``(a, b)`` gives a stride-1 kernel ``[T, T, C_in, s * s * C_out]``
over a small window ``T``; a stride-1 convolution with it, then moving the ``s * s`` phases
to space (depth-to-space), is the transposed convolution, with stride-1 convolutions only in
its forward and backward passes. ``pad`` is ``lax.conv_transpose``'s own low padding of the
dilated input, so the result equals ``lax.conv_transpose(x, kernel, (s, s), padding)`` (not
kernel-flipped, as ``flax.linen.ConvTranspose`` calls it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _low_padding(kernel: int, stride: int, padding: str) -> int:
    """The low padding ``lax.conv_transpose`` gives the ``stride``-dilated input."""
    if padding == "SAME":
        return kernel - 1 if stride > kernel - 1 else int(np.ceil((kernel + stride - 2) / 2))
    return kernel - 1  # VALID


def phase_taps(kernel: int, stride: int, padding: str) -> tuple[int, np.ndarray]:
    """``(low, taps)``: the window starts at input offset ``-low``; ``taps[a, t]`` is the
    kernel tap output phase ``a`` applies at window position ``t`` (``-1``: none)."""
    if padding not in ("SAME", "VALID") or (padding == "VALID" and kernel > stride):
        raise ValueError(f"subpixel transposed convolution: padding {padding!r} with kernel "
                         f"{kernel} and stride {stride} does not give {stride} x the input")
    pad = _low_padding(kernel, stride, padding)
    offsets = {(a, k): (a + k - pad) // stride for a in range(stride) for k in range(kernel)
               if (a + k - pad) % stride == 0}
    low, high = -min(offsets.values()), max(offsets.values())
    taps = -np.ones((stride, low + high + 1), np.int64)
    for (a, k), d in offsets.items():
        taps[a, d + low] = k
    return low, taps


def subpixel_kernel(kernel: jax.Array, stride: int, padding: str) -> tuple[int, jax.Array]:
    """``(low, [T, T, C_in, s * s * C_out])``: the stride-1 kernel of the phases of
    ``kernel [k, k, C_in, C_out]`` (phase-major: channel ``(a * s + b) * C_out + o``)."""
    k, _, c_in, c_out = kernel.shape
    low, taps = phase_taps(k, stride, padding)
    padded = jnp.concatenate([kernel, jnp.zeros((1, k, c_in, c_out), kernel.dtype)], axis=0)
    padded = jnp.concatenate([padded, jnp.zeros((k + 1, 1, c_in, c_out), kernel.dtype)], axis=1)
    rows, cols = taps[:, None, :, None], taps[None, :, None, :]  # [a, b, ti, tj] tap indices
    gathered = padded[rows, cols]  # [s, s, T, T, C_in, C_out]; -1 is the zero row/column
    window = taps.shape[1]
    return low, gathered.transpose(2, 3, 4, 0, 1, 5).reshape(window, window, c_in,
                                                             stride * stride * c_out)


def conv_transpose_subpixel(x: jax.Array, kernel: jax.Array, stride: int, padding: str,
                            precision: Any = None) -> jax.Array:
    """``lax.conv_transpose(x, kernel, (stride, stride), padding)`` for ``x [B, H, W, C_in]``
    and ``kernel [k, k, C_in, C_out]``, as a stride-1 convolution: ``[B, sH, sW, C_out]``."""
    low, sub = subpixel_kernel(kernel, stride, padding)
    high = sub.shape[0] - 1 - low
    y = lax.conv_general_dilated(x, sub.astype(x.dtype), (1, 1), ((low, high), (low, high)),
                                 dimension_numbers=DIMENSIONS, precision=precision)
    b, h, w, _ = y.shape
    c_out = kernel.shape[-1]
    y = y.reshape(b, h, w, stride, stride, c_out).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h * stride, w * stride, c_out)


class SubpixelConvTranspose(nn.Module):
    """``flax.linen.ConvTranspose`` (square kernel and stride, ``"SAME"``, or ``"VALID"`` with
    kernel <= stride), computed as above; same parameters (``kernel [k, k, C_in, C_out]``,
    ``bias``), initialisers and outputs. Stride 1 is the plain transposed convolution."""

    features: int
    kernel_size: int
    stride: int
    padding: str = "SAME"
    use_bias: bool = True
    precision: Any = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        if self.stride == 1:
            y = lax.conv_transpose(x, kernel.astype(x.dtype), (1, 1), self.padding,
                                   dimension_numbers=DIMENSIONS, precision=self.precision)
        else:
            y = conv_transpose_subpixel(x, kernel, self.stride, self.padding, self.precision)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(y.dtype)
        return y
