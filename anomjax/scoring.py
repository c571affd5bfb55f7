"""Shared post-processing that turns a method's coarse patch scores into pixel maps.

Every method uses these so that upsampling, smoothing and image scores are computed the
same way everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.types import Scores

HIGHEST = jax.lax.Precision.HIGHEST


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> jax.Array:
    """Normalised 1-D Gaussian taps ``[2r+1]`` with radius ``r = round(truncate * sigma)``."""
    radius = max(int(truncate * sigma + 0.5), 1)
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (x / sigma) ** 2)
    return k / jnp.sum(k)


def scaled_sigma(sigma: float, size: tuple[int, int], sigma_side: int) -> float:
    """The blur's standard deviation in pixels of an image of ``size`` (H, W) when ``sigma``
    was set for images of side ``sigma_side``: ``sigma * min(H, W) / sigma_side``, so that a
    map blurs the same share of the object at every resolution. ``sigma_side=0`` keeps
    ``sigma`` in pixels at every size."""
    if sigma_side < 0:
        raise ValueError(f"sigma_side must be >= 0, got {sigma_side}")
    return sigma if sigma_side == 0 else sigma * min(size) / sigma_side


def gaussian_blur(maps: jax.Array, sigma: float, sigma_side: int = 0) -> jax.Array:
    """Separable Gaussian smoothing of ``[B, H, W]`` maps with reflect padding.

    Matches ``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)`` per image with the
    standard deviation :func:`scaled_sigma` ``(sigma, (H, W), sigma_side)``. The two
    convolutions run at ``Precision.HIGHEST`` (full float32 on GPU/TPU, not TF32/bfloat16).
    ``sigma <= 0`` returns the maps unchanged.
    """
    sigma = scaled_sigma(sigma, maps.shape[1:3], sigma_side)
    if sigma <= 0:
        return maps
    k = gaussian_kernel_1d(sigma)
    r = (k.shape[0] - 1) // 2
    x = maps.astype(jnp.float32)[:, None]  # [B, 1, H, W]
    x = jnp.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="symmetric")
    dn = ("NCHW", "OIHW", "NCHW")
    x = jax.lax.conv_general_dilated(x, k.reshape(1, 1, -1, 1), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=HIGHEST)
    x = jax.lax.conv_general_dilated(x, k.reshape(1, 1, 1, -1), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=HIGHEST)
    return x[:, 0]


def _corner_aligned_weights(n_in: int, n_out: int) -> jax.Array:
    """``[n_out, n_in]`` linear-interpolation weights with the corner samples aligned
    (output ``i`` reads input position ``i (n_in - 1) / (n_out - 1)``)."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    low = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = pos - low
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), low), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), high), frac)
    return jnp.asarray(weights, jnp.float32)


def upsample(maps: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
    """Bilinear resize of ``[B, h, w]`` maps to ``[B, *size]``: half-pixel centres (PyTorch's
    ``align_corners=False``), or with ``align_corners`` the corner pixels' centres aligned
    (PyTorch's ``align_corners=True``); maps already of that size are returned as they are."""
    b = maps.shape[0]
    maps = maps.astype(jnp.float32)
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    if align_corners:
        rows = _corner_aligned_weights(maps.shape[1], size[0])
        cols = _corner_aligned_weights(maps.shape[2], size[1])
        return jnp.einsum("yh,bhw,xw->byx", rows, maps, cols, precision=HIGHEST)
    return jax.image.resize(maps, (b, *size), method="bilinear", antialias=False)


def to_scores(patch_maps: jax.Array, size: tuple[int, int], sigma: float,
              image_score: jax.Array | None = None, sigma_side: int = 0) -> Scores:
    """Upsample ``[B, h, w]`` patch scores to ``size``, smooth them (:func:`gaussian_blur`
    with ``sigma`` set at ``sigma_side``), and build ``Scores``.

    The image score defaults to the maximum of the smoothed map; methods whose paper defines
    another image score pass it as ``image_score`` ``[B]``.
    """
    maps = gaussian_blur(upsample(patch_maps, size), sigma, sigma_side)
    if image_score is None:
        image_score = jnp.max(maps, axis=(1, 2))
    return Scores(image=image_score.astype(jnp.float32), maps=maps)

