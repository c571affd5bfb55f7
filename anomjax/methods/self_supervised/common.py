"""Small pure helpers shared by the self-supervised methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_filter(maps: jax.Array, size: int) -> jax.Array:
    """``size x size`` mean filter of ``[B, H, W]`` maps, stride 1, zero padding of ``size //
    2`` counted in the mean (PyTorch ``avg_pool2d(size, 1, size // 2)``)."""
    pad = size // 2
    summed = jax.lax.reduce_window(maps.astype(jnp.float32), 0.0, jax.lax.add, (1, size, size),
                                   (1, 1, 1), ((0, 0), (pad, pad), (pad, pad)))
    return summed / (size * size)
