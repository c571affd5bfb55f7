"""PatchCore's locally aware patch features (Roth et al., CVPR 2022, Sec. 3.1).

Each tapped feature map is averaged over the 3x3 neighbourhood of every position (stride 1,
zero padding counted, like ``AvgPool2d(3, 1, 1)``), deeper maps are resized bilinearly to
the first (shallowest) map's grid, every layer's channel vector is adaptive-average-pooled
to ``layer_dim`` (1024), and the concatenation of the layers is adaptive-average-pooled to
``target_dim`` (1024).

Both poolings are fixed linear maps of the concatenated neighbourhood averages ``x``
``[..., C]`` (``C`` = sum of the layers' channels), so the paper's feature is ``x @ W`` with
``W = pooling_matrix(channels)`` ``[C, target_dim]``. When ``C < target_dim`` (Lite0:
40 + 112 = 152 channels against 1024), :func:`compact_basis` gives ``B`` ``[C, K]``,
``K = min(C, target_dim)``, with ``|x B - y B| = |x W - y W|`` for all ``x, y`` (from the QR
factorisation ``W^T = Q R``, ``B = R^T``): nearest-neighbour distances in the compact
coordinates ``x @ B`` are the paper's distances at a fraction of the memory and compute.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PATCH_SIZE = 3
LAYER_DIM = 1024
TARGET_DIM = 1024


def neighbourhood_average(feature_map: jax.Array, patch_size: int = PATCH_SIZE) -> jax.Array:
    """Mean over each ``p`` x ``p`` neighbourhood of ``[B, h, w, C]`` (zeros outside the map)."""
    if patch_size % 2 != 1:
        raise ValueError(f"patch_size must be odd (a centred neighbourhood); got {patch_size}")
    r = patch_size // 2
    window = (1, patch_size, patch_size, 1)
    summed = jax.lax.reduce_window(feature_map.astype(jnp.float32), 0.0, jax.lax.add, window,
                                   (1, 1, 1, 1), ((0, 0), (r, r), (r, r), (0, 0)))
    return summed / float(patch_size * patch_size)


def aligned_neighbourhood_features(feature_maps: Sequence[jax.Array],
                                   patch_size: int = PATCH_SIZE) -> jax.Array:
    """Neighbourhood averages of each map, resized to the first map's grid and concatenated.

    Args:
      feature_maps: ``[B, h_i, w_i, C_i]`` maps, shallowest (finest grid) first.
      patch_size: neighbourhood size ``p`` (the paper's 3).

    Returns:
      ``[B, h_0, w_0, sum_i C_i]`` float32.
    """
    if not feature_maps:
        raise ValueError("aligned_neighbourhood_features needs at least one feature map")
    first = feature_maps[0]
    b, h, w = first.shape[:3]
    out = []
    for fmap in feature_maps:
        if fmap.ndim != 4 or fmap.shape[0] != b:
            raise ValueError(f"feature maps must be [B, h, w, C] with the same B; got shapes "
                             f"{[tuple(f.shape) for f in feature_maps]}")
        agg = neighbourhood_average(fmap, patch_size)
        if agg.shape[1:3] != (h, w):
            agg = jax.image.resize(agg, (b, h, w, agg.shape[3]), method="bilinear",
                                   antialias=False)
        out.append(agg)
    return jnp.concatenate(out, axis=-1)


def adaptive_avg_pool_matrix(in_dim: int, out_dim: int) -> np.ndarray:
    """``[in_dim, out_dim]`` matrix of 1-D adaptive average pooling (PyTorch's windows).

    Output ``i`` averages inputs ``floor(i * in / out)`` to ``ceil((i + 1) * in / out) - 1``.
    """
    mat = np.zeros((in_dim, out_dim), np.float64)
    for i in range(out_dim):
        lo = (i * in_dim) // out_dim
        hi = -((-(i + 1) * in_dim) // out_dim)
        mat[lo:hi, i] = 1.0 / (hi - lo)
    return mat


def pooling_matrix(channels: Sequence[int], layer_dim: int = LAYER_DIM,
                   target_dim: int = TARGET_DIM) -> np.ndarray:
    """``W`` ``[sum(channels), target_dim]``: pool each layer to ``layer_dim``, then the concat."""
    total = int(sum(channels))
    per_layer = np.zeros((total, layer_dim * len(channels)), np.float64)
    row = 0
    for j, c in enumerate(channels):
        per_layer[row:row + c, j * layer_dim:(j + 1) * layer_dim] = adaptive_avg_pool_matrix(
            c, layer_dim)
        row += c
    return per_layer @ adaptive_avg_pool_matrix(layer_dim * len(channels), target_dim)


def compact_basis(pool: np.ndarray) -> np.ndarray:
    """``B`` ``[C, K]``, ``K = min(C, target)``: ``|(x - y) B| = |(x - y) W|``, ``W = pool``."""
    _, r = np.linalg.qr(pool.T, mode="reduced")  # W^T = Q R, Q with orthonormal columns
    return r.T


@functools.cache
def compact_pooling_basis(channels: tuple[int, ...], layer_dim: int = LAYER_DIM,
                          target_dim: int = TARGET_DIM) -> np.ndarray:
    """Float32 :func:`compact_basis` of :func:`pooling_matrix` ``[sum(channels), K]`` (cached)."""
    basis = compact_basis(pooling_matrix(channels, layer_dim, target_dim)).astype(np.float32)
    basis.setflags(write=False)
    return basis
