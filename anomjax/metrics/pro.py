"""Per-region overlap (PRO) curve and AUPRO, as defined for MVTec AD (Bergmann et al.).

For a threshold ``t``, PRO is the mean over all ground-truth connected components (found
per image with 8-connectivity) of the fraction of the component's pixels scoring ``>= t``;
it is plotted against the false-positive rate on defect-free pixels (pixels outside every
mask of every image, so normal pixels of defective images count too). AUPRO integrates that
curve from FPR 0 to ``max_fpr`` (0.3 by default), interpolating it at exactly ``max_fpr``,
and divides by ``max_fpr``, so a perfect map scores 1.

PRO is a weighted ROC: every pixel of component ``c`` carries weight ``1 / (K |c|)`` (``K``
components in all) and the curve is the cumulative weight above the threshold. So one sort
gives the exact curve at every distinct threshold, ties merged as one step. Component
labelling uses ``scipy.ndimage.label`` on the host (not jittable); everything after it is.

Defective images whose mask is empty contribute no component; their pixels are normal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from anomjax.metrics._checks import check_finite, check_ndim, check_same_shape, warn_undefined
from anomjax.metrics.curves import (
    array_namespace,
    cumulate_sorted,
    partial_area,
    sort_descending,
    sorted_on_host,
)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def component_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the defect regions of ``[N, H, W]`` masks (> 0 is defect), 8-connected per image.

    Returns:
      ``(weights, n_components)``: ``weights`` ``[N, H, W]`` float32 is ``1 / |c|`` on the
      pixels of each component ``c`` and 0 on normal pixels; ``n_components`` is ``K``.
    """
    masks = np.asarray(masks)
    check_ndim("masks", masks, 3, "[N, H, W]")
    weights = np.zeros(masks.shape, np.float32)
    n_components = 0
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask > 0, structure=_EIGHT_CONNECTED)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        inverse = np.zeros(n + 1, np.float32)
        inverse[1:] = 1.0 / sizes[1:]
        weights[i] = inverse[labels]
        n_components += n
    return weights, n_components


def _sorted_pro(scores: jax.Array, weights: jax.Array, normal: jax.Array, n_components):
    """Cumulative false positives, PRO and the run-end mask, each ``[M]`` (host NumPy for
    NumPy input, else JAX).

    ``scores`` are flat and descending; ``weights`` and ``normal`` (1 for a normal pixel,
    else 0) follow them.
    """
    xp = array_namespace(scores, weights, normal)
    overlap, false_pos, is_step = cumulate_sorted(scores, weights, normal)
    n_components = xp.asarray(n_components, overlap.dtype)
    pro = overlap / xp.where(n_components > 0, n_components, xp.nan)
    return false_pos, pro, is_step


@jax.jit
def aupro_from_weights(maps: jax.Array, weights: jax.Array, n_components: int | jax.Array,
                       max_fpr: float | jax.Array = 0.3) -> jax.Array:
    """AUPRO of ``[N, H, W]`` maps given :func:`component_weights` (jittable, XLA sort).

    NaN when there is no component, no normal pixel, or a non-finite score.
    """
    weights = jnp.ravel(weights)
    scores, weights, normal = sort_descending(maps, weights, (weights == 0).astype(jnp.int8))
    false_pos, pro, _ = _sorted_pro(scores, weights, normal, n_components)
    value = partial_area(false_pos, pro, max_fpr) / max_fpr
    return jnp.where(jnp.all(jnp.isfinite(scores)), value, jnp.nan)


def _sorted_inputs(maps, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat descending ``(scores, weights, normal)`` on the host."""
    scores, (weights, normal) = sorted_on_host(maps, [weights, (weights == 0).astype(np.int8)])
    return scores, weights, normal


def _checked_weights(maps, masks) -> tuple[np.ndarray, int]:
    check_ndim("maps", maps, 3, "[N, H, W]")
    check_same_shape("maps", maps, "masks", masks)
    check_finite("maps", maps)
    weights, n_components = component_weights(masks)
    warn_undefined_pro(n_components, bool((weights == 0).any()))
    return weights, n_components


def warn_undefined_pro(n_components: int, has_normal_pixel: bool) -> None:
    """Warn when PRO is undefined: no defect region, or no normal pixel for the FPR."""
    if n_components == 0:
        warn_undefined("PRO", "masks hold no defect region")
    elif not has_normal_pixel:
        warn_undefined("PRO", "masks hold no normal pixel, so the false-positive rate is undefined")


def aupro(maps: jax.Array, masks: jax.Array, max_fpr: float = 0.3) -> jax.Array:
    """Area under the PRO curve up to FPR ``max_fpr``, divided by ``max_fpr``.

    Args:
      maps: ``[N, H, W]`` anomaly maps (higher = more anomalous), finite.
      masks: ``[N, H, W]`` ground truth, > 0 is defect.
      max_fpr: integration limit in ``(0, 1]``.

    Returns:
      A scalar in ``[0, 1]``; NaN with a warning if there is no defect region or no normal
      pixel.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    weights, n_components = _checked_weights(maps, masks)
    false_pos, pro, _ = _sorted_pro(*_sorted_inputs(maps, weights), n_components)
    return partial_area(false_pos, pro, max_fpr) / max_fpr


def pro_curve(maps: jax.Array, masks: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact PRO curve at every distinct threshold, from (0, 0).

    Returns:
      ``(fpr, pro, thresholds)`` as numpy arrays ``[T + 1]``; entry 0 is the origin with
      threshold ``+inf``, the others follow the distinct scores in descending order.
    """
    weights, n_components = _checked_weights(maps, masks)
    thresholds, weights, normal = _sorted_inputs(maps, weights)
    false_pos, pro, is_step = _sorted_pro(thresholds, weights, normal, n_components)
    step = np.asarray(is_step)
    false_pos = np.asarray(false_pos, np.float64)
    fpr = false_pos / false_pos[-1] if false_pos[-1] > 0 else np.full(false_pos.shape, np.nan)
    return (np.concatenate([[0.0], fpr[step]]),
            np.concatenate([[0.0], np.asarray(pro)[step]]),
            np.concatenate([[np.inf], np.asarray(thresholds)[step]]))
