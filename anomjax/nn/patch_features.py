"""PatchCore's locally aware patch features (Roth et al., CVPR 2022, Sec. 3.1).

Every position of each tapped map ``[B, h_i, w_i, C_i]`` is described by its ``p x p``
neighbourhood (stride 1, zeros outside the map); deeper maps are resized bilinearly (half-pixel
centres, ``align_corners=False``) to the first (shallowest) map's grid; each layer's patch is
adaptive-average-pooled to ``layer_dim`` (1024) and the concatenation of the layers is
adaptive-average-pooled to ``target_dim`` (1024). Two readings of the per-layer pooling:

* ``"patch"`` (the authors' code, ``patchcore-inspection``: ``PatchMaker.patchify`` unfolds
  ``[C, p, p]``, ``MeanMapper`` flattens it channel-major and runs ``adaptive_avg_pool1d``
  to 1024): channels and neighbourhood taps are pooled together, so on backbones with few
  channels (Lite0: 9 x 40 = 360 and 9 x 112 = 1008 values per layer) the nine taps stay
  apart.
* ``"mean"`` (anomalib's ``AvgPool2d(3, 1, 1)``, the previous default here): the ``p x p``
  neighbourhood is averaged first and its ``C`` channels are pooled to 1024. On
  WideResNet-50 (512 and 1024 channels) both readings nearly coincide; on Lite0 and
  ResNet18 they do not.

Either way the feature is a fixed linear map ``u @ W`` of the unfolded, concatenated
patches ``u`` (``sum_i p^2 C_i`` values, layer-major, then channel-major, then the taps in
row-major order), ``W = patch_pooling_matrix(...)``. Bilinear resizing is linear and acts per
channel, so it commutes with that map. :func:`compact_basis` gives ``B`` ``[F, K]`` with
``K = rank(W) <= target_dim`` and ``|u B - v B| = |u W - v W|`` for all ``u, v``: Euclidean
distances in the compact coordinates are the 1024-d feature's distances (Lite0: ``K = 872``
for ``"patch"``, ``152`` for ``"mean"``). :func:`local_patch_features` computes ``u @ B``
without unfolding: one ``p x p`` convolution per layer whose kernel is that layer's rows of
``B``, resized to the first grid and summed.
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
AGGREGATIONS = ("patch", "mean")
HIGHEST = jax.lax.Precision.HIGHEST


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
    """``[sum(channels), target_dim]``: pool each layer's channels to ``layer_dim``, then the
    concatenation to ``target_dim`` (the ``"mean"`` reading, applied to averaged patches)."""
    return _two_stage(channels, [adaptive_avg_pool_matrix(c, layer_dim) for c in channels],
                      layer_dim, target_dim)


def patch_pooling_matrix(channels: Sequence[int], layer_dim: int = LAYER_DIM,
                         target_dim: int = TARGET_DIM, patch_size: int = PATCH_SIZE,
                         aggregation: str = "patch") -> np.ndarray:
    """``W`` ``[sum_i p^2 C_i, target_dim]`` from unfolded patches to the pooled feature.

    Rows are layer-major, then channel-major, then the ``p x p`` taps row-major (the order
    of ``torch.nn.Unfold`` and of the authors' ``reshape(len(x), 1, -1)``).
    """
    _check_patch(patch_size, aggregation)
    taps = patch_size * patch_size
    if aggregation == "patch":
        blocks = [adaptive_avg_pool_matrix(c * taps, layer_dim) for c in channels]
    else:  # the mean over the taps, then the channels pooled
        blocks = [np.repeat(adaptive_avg_pool_matrix(c, layer_dim), taps, axis=0) / taps
                  for c in channels]
    return _two_stage([c * taps for c in channels], blocks, layer_dim, target_dim)


def _two_stage(rows: Sequence[int], blocks: Sequence[np.ndarray], layer_dim: int,
               target_dim: int) -> np.ndarray:
    """Block-diagonal per-layer maps to ``layer_dim`` each, then the concatenation pooled."""
    per_layer = np.zeros((int(sum(rows)), layer_dim * len(blocks)), np.float64)
    row = 0
    for j, (n, block) in enumerate(zip(rows, blocks, strict=True)):
        per_layer[row:row + n, j * layer_dim:(j + 1) * layer_dim] = block
        row += n
    return per_layer @ adaptive_avg_pool_matrix(layer_dim * len(blocks), target_dim)


def compact_basis(pool: np.ndarray) -> np.ndarray:
    """``B`` ``[F, K]``, ``K = rank(pool)``: ``|(x - y) B| = |(x - y) W|`` for ``W = pool``.

    From the eigendecomposition of the smaller Gram matrix: with ``W^T W = V L V^T``,
    ``B = W V`` (``T <= F``); with ``W W^T = U L U^T``, ``B = U L^(1/2)``. Eigenvalues below
    ``max(F, T) * eps * l_max`` are dropped (the exact rank of the pooling maps).
    """
    f, t = pool.shape
    gram = pool.T @ pool if t <= f else pool @ pool.T
    lam, vec = np.linalg.eigh(gram)
    keep = lam > lam.max() * max(f, t) * np.finfo(pool.dtype).eps
    return pool @ vec[:, keep] if t <= f else vec[:, keep] * np.sqrt(lam[keep])


@functools.cache
def compact_patch_basis(channels: tuple[int, ...], layer_dim: int = LAYER_DIM,
                        target_dim: int = TARGET_DIM, patch_size: int = PATCH_SIZE,
                        aggregation: str = "patch") -> np.ndarray:
    """Float32 :func:`compact_basis` of :func:`patch_pooling_matrix` ``[F, K]`` (cached)."""
    pool = patch_pooling_matrix(channels, layer_dim, target_dim, patch_size, aggregation)
    basis = compact_basis(pool).astype(np.float32)
    basis.setflags(write=False)
    return basis


def local_patch_features(feature_maps: Sequence[jax.Array], basis: jax.Array,
                         patch_size: int = PATCH_SIZE) -> jax.Array:
    """Compact patch features ``[B, h_0, w_0, K]``: the unfolded patches times ``basis``.

    Args:
      feature_maps: ``[B, h_i, w_i, C_i]`` maps, shallowest (finest grid) first.
      basis: ``[sum_i p^2 C_i, K]`` (rows ordered as in :func:`patch_pooling_matrix`).
      patch_size: neighbourhood size ``p`` (the paper's 3).
    """
    _check_patch(patch_size, "patch")
    if not feature_maps:
        raise ValueError("local_patch_features needs at least one feature map")
    b, h, w = feature_maps[0].shape[:3]
    if any(f.ndim != 4 or f.shape[0] != b for f in feature_maps):
        raise ValueError(f"feature maps must be [B, h, w, C] with the same B; got shapes "
                         f"{[tuple(f.shape) for f in feature_maps]}")
    taps = patch_size * patch_size
    rows = [taps * f.shape[3] for f in feature_maps]
    if sum(rows) != basis.shape[0]:
        raise ValueError(f"basis has {basis.shape[0]} rows but the maps' patches have "
                         f"{sum(rows)} values ({patch_size}x{patch_size} x channels)")
    out = None
    start = 0
    for fmap, n in zip(feature_maps, rows, strict=True):
        c = fmap.shape[3]
        # rows c * p^2 + (dy * p + dx) -> HWIO kernel [p, p, C, K]
        kernel = basis[start:start + n].reshape(c, patch_size, patch_size, -1)
        kernel = jnp.transpose(kernel, (1, 2, 0, 3)).astype(jnp.float32)
        start += n
        z = jax.lax.conv_general_dilated(fmap.astype(jnp.float32), kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=HIGHEST)
        if z.shape[1:3] != (h, w):
            z = jax.image.resize(z, (b, h, w, z.shape[3]), method="bilinear", antialias=False)
        out = z if out is None else out + z
    return out


def _check_patch(patch_size: int, aggregation: str) -> None:
    if patch_size < 1 or patch_size % 2 != 1:
        raise ValueError(f"patch_size must be odd and positive (a centred neighbourhood); "
                         f"got {patch_size}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
