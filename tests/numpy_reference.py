"""Independent NumPy formulas of the PyTorch operations the feature-modeling papers' code uses.

Written from PyTorch's documented definitions, not from anomjax: the tests compare anomjax's
JAX code against these.
"""

from __future__ import annotations

import numpy as np


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of ``F.interpolate(mode="bilinear", align_corners=False)``.

    Output ``i`` samples source ``x = (i + 0.5) * in / out - 0.5`` clamped below at 0; it mixes
    ``floor(x)`` and ``floor(x) + 1`` (clamped to ``in - 1``) by the fractional part.
    """
    w = np.zeros((out_size, in_size))
    scale = in_size / out_size
    for i in range(out_size):
        x = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(np.floor(x)), in_size - 1)
        hi = min(lo + 1, in_size - 1)
        frac = x - lo
        w[i, lo] += 1.0 - frac
        w[i, hi] += frac
    return w


def torch_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(bilinear, align_corners=False)`` of ``[B, h, w, ...]`` to ``size``."""
    wy = _bilinear_weights(x.shape[1], size[0])
    wx = _bilinear_weights(x.shape[2], size[1])
    return np.einsum("yh,xw,bhw...->byx...", wy, wx, x.astype(np.float64))


def _antialiased_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of torchvision's ``Resize(antialias=True)`` bilinear filter.

    Output ``i`` is centred on source ``c = (i + 0.5) * in / out``; the triangle filter is
    stretched by ``s = max(in / out, 1)``: source pixel ``j`` weighs ``max(0, 1 - |j + 0.5 -
    c| / s)`` for ``j`` in ``[floor(c - s + 0.5), floor(c + s + 0.5))`` within the image, and
    the weights are normalised to sum to 1.
    """
    w = np.zeros((out_size, in_size))
    scale = in_size / out_size
    support = max(scale, 1.0)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(np.floor(centre - support + 0.5)), 0)
        hi = min(int(np.floor(centre + support + 0.5)), in_size)
        taps = np.arange(lo, hi)
        w[i, lo:hi] = np.maximum(0.0, 1.0 - np.abs(taps + 0.5 - centre) / support)
        w[i] /= w[i].sum()
    return w


def antialiased_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision's antialiased bilinear ``Resize`` of a float ``[H, W, C]`` image to
    ``size`` (float64, no rounding)."""
    wy = _antialiased_weights(x.shape[0], size[0])
    wx = _antialiased_weights(x.shape[1], size[1])
    rows = np.einsum("yh,hwc->ywc", wy, x.astype(np.float64))
    return np.einsum("xw,ywc->yxc", wx, rows)


def torch_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(mode="nearest")`` of ``[B, h, w, ...]``: source ``floor(i * in / out)``."""
    rows = (np.arange(size[0]) * x.shape[1]) // size[0]
    cols = (np.arange(size[1]) * x.shape[2]) // size[1]
    return x[:, rows][:, :, cols]


def adaptive_avg_pool1d(x: np.ndarray, out_dim: int) -> np.ndarray:
    """``F.adaptive_avg_pool1d`` over the last axis of ``x`` (PyTorch's start/end windows)."""
    n = x.shape[-1]
    out = [x[..., (i * n) // out_dim: -(-(i + 1) * n // out_dim)].mean(-1) for i in range(out_dim)]
    return np.stack(out, axis=-1)


def unfold(x: np.ndarray, p: int) -> np.ndarray:
    """``nn.Unfold(p, padding=p // 2)`` of ``[B, h, w, C]``: ``[B, h, w, C, p, p]``, zero padded."""
    r = p // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    h, w = x.shape[1:3]
    patches = np.stack([np.stack([padded[:, dy:dy + h, dx:dx + w] for dx in range(p)], -1)
                        for dy in range(p)], -2)
    return patches  # [B, h, w, C, p(dy), p(dx)]


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Euclidean distances ``[len(a), len(b)]`` in float64, from differences."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
