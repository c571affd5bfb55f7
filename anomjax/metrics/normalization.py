"""Min-max score normalisation around a decision threshold, for deployment.

``normalized = clip((score - threshold) / (max - min) + 0.5, 0, 1)``, with ``min`` and
``max`` taken over validation scores: the threshold maps to 0.5, so normalised scores of
any method read the same way (``>= 0.5`` is defective), and the validation range spans
one unit around it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from anomjax.metrics._checks import check_finite


@struct.dataclass
class NormalizationStats:
    """Threshold and validation score range (scalars; a pytree, so it checkpoints)."""

    threshold: jax.Array
    min: jax.Array
    max: jax.Array


def normalization_stats(validation_scores, threshold: float) -> NormalizationStats:
    """Collect the range of validation scores (any shape, e.g. ``[N]`` or ``[N, H, W]``).

    Raises ``ValueError`` for empty or non-finite scores, a non-finite threshold, or a range
    of zero width (all scores equal).
    """
    scores = np.asarray(validation_scores, np.float32)
    if scores.size == 0:
        raise ValueError("validation_scores is empty")
    check_finite("validation_scores", scores)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    lo, hi = float(scores.min()), float(scores.max())
    if hi <= lo:
        raise ValueError(f"all validation scores equal {lo}; min-max normalisation needs a range")
    return NormalizationStats(threshold=jnp.float32(threshold), min=jnp.float32(lo),
                              max=jnp.float32(hi))


@jax.jit
def normalize(scores: jax.Array, stats: NormalizationStats) -> jax.Array:
    """Map scores of any shape to ``[0, 1]`` with the threshold at 0.5 (jittable)."""
    scaled = (jnp.asarray(scores, jnp.float32) - stats.threshold) / (stats.max - stats.min)
    return jnp.clip(scaled + 0.5, 0.0, 1.0)
