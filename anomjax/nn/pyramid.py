"""Feature pyramids: several backbone taps resampled to one grid and concatenated.

PaDiM, semi-orthogonal PaDiM and SPADE describe every patch by the features of several
backbone stages stacked at the finest stage's resolution. PaDiM's reference code does this
with nearest-neighbour upsampling (each coarse cell is copied over the fine cells it
covers); SPADE's pyramid is resampled bilinearly.

``"nearest"`` follows PyTorch's ``F.interpolate(mode="nearest")`` (anomalib's PaDiM): output
``i`` copies input ``floor(i * in / out)``. For the integer ratios of inputs divisible by the
coarsest stride this is the reference's block copy; for the odd grids of other inputs it
differs from JAX's half-pixel nearest rule, so it is implemented here as a gather.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def concat_taps(features: Mapping[str, jax.Array], taps: Sequence[str], *,
                size: tuple[int, int] | None = None, method: str = "nearest") -> jax.Array:
    """Concatenate ``features[tap]`` ``[B, h_i, w_i, C_i]`` into ``[B, h, w, sum C_i]``.

    ``(h, w)`` is ``size`` or, by default, the first tap's grid; every other tap is resized
    to it with ``method``: ``"nearest"`` (PyTorch's ``floor`` rule) or ``"bilinear"``
    (half-pixel centres, ``align_corners=False``; shrinking is antialiased). Jittable.
    """
    if method not in ("nearest", "bilinear"):
        raise ValueError(f"method must be 'nearest' or 'bilinear', got {method!r}")
    if not taps:
        raise ValueError("at least one feature tap is needed")
    missing = [t for t in taps if t not in features]
    if missing:
        raise ValueError(f"feature taps {missing} were not extracted; have {sorted(features)}")
    first = features[taps[0]]
    h, w = size if size is not None else first.shape[1:3]
    parts = []
    for tap in taps:
        x = features[tap].astype(jnp.float32)
        if x.shape[1:3] != (h, w):
            x = (torch_nearest(x, (h, w)) if method == "nearest" else
                 jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method=method))
        parts.append(x)
    return jnp.concatenate(parts, axis=-1)


def torch_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest resize of ``[B, h, w, C]`` to ``[B, *size, C]``: output ``i`` is input
    ``floor(i * in / out)`` (PyTorch's ``mode="nearest"``)."""
    rows = (np.arange(size[0]) * x.shape[1]) // size[0]
    cols = (np.arange(size[1]) * x.shape[2]) // size[1]
    return x[:, rows][:, :, cols]
