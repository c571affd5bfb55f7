"""Gaussian receptive-field upsampling of coarse score maps (FCDD, Liznerski et al., ICLR 2021).

Each low-resolution score ``a[i, j]`` stands for the input region its output unit sees: a
``kernel x kernel`` window whose top-left corner is at ``(i * stride + offset, j * stride +
offset)``. The full-resolution map is the transposed convolution of ``a`` with a fixed 2-D
Gaussian of that size (peak 1, standard deviation ``sigma``), as FCDD's
``receptive_upsample`` does; ``normalize=True`` divides by the summed kernel weights at every
pixel, which turns it into a Gaussian-weighted mean of the scores of the windows covering the
pixel (used for CutPaste's overlapping patches); with ``sigma=None`` the window is a box and
the normalised result the plain mean over covering windows (Patch SVDD's
``distribute_scores``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_window(kernel: int, sigma: float | None) -> np.ndarray:
    """``[kernel, kernel]`` Gaussian with peak 1 at the centre ``(kernel - 1) / 2``
    (``sigma=None``: all ones, a box)."""
    if sigma is None:
        return np.ones((kernel, kernel), np.float32)
    x = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return np.outer(g, g).astype(np.float32)


def _transpose_conv(maps: jax.Array, window: jax.Array, stride: int) -> jax.Array:
    """``[B, h, w] -> [B, (h-1) s + k, (w-1) s + k]``: each score times the window, summed."""
    k = window.shape[0]
    out = jax.lax.conv_general_dilated(
        maps[:, None].astype(jnp.float32), window[::-1, ::-1][None, None], (1, 1),
        ((k - 1, k - 1), (k - 1, k - 1)), lhs_dilation=(stride, stride),
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=jax.lax.Precision.HIGHEST)
    return out[:, 0]


def receptive_upsample(maps: jax.Array, size: tuple[int, int], *, stride: int, kernel: int,
                       sigma: float | None, offset: int = 0, normalize: bool = False) -> jax.Array:
    """Upsample ``[B, h, w]`` scores to ``[B, *size]`` (see the module docstring)."""
    window = jnp.asarray(gaussian_window(kernel, sigma))

    def place(x: jax.Array) -> jax.Array:
        full = _transpose_conv(x, window, stride)
        # Output index t is input pixel t + offset: shift, then crop or zero-pad to size.
        top = -offset
        pads = [(max(-top, 0), max(size[0] + top - full.shape[1], 0)),
                (max(-top, 0), max(size[1] + top - full.shape[2], 0))]
        full = jnp.pad(full, ((0, 0), *pads))
        start = top + pads[0][0]
        return full[:, start:start + size[0], start:start + size[1]]

    up = place(maps)
    if normalize:
        up = up / jnp.maximum(place(jnp.ones(maps.shape[1:], jnp.float32)[None]), 1e-12)
    return up
