"""Decision thresholds for deployment, chosen on a validation split.

A sample (image or pixel) is predicted defective when ``score >= threshold``.
"""

from __future__ import annotations

import numpy as np

from anomjax.metrics._checks import check_finite, pixel_count
from anomjax.metrics.binned import DEFAULT_BINS, binned_pixel_f1_max, pixel_histograms
from anomjax.metrics.compute import EXACT_PIXEL_LIMIT
from anomjax.metrics.ranking import f1_max, pixel_ranking_metrics

_NO_DEFECT = ("so F1 is undefined; validate on a split with defects or use quantile_threshold "
              "on normal scores")


def f1_adaptive_threshold(scores, labels) -> float:
    """The threshold maximising F1 of ``[N]`` validation scores for 0/1 ``labels``.

    Raises ``ValueError`` if no label is 1. Among equally good thresholds the highest is
    chosen (fewest false alarms).
    """
    if not np.any(np.asarray(labels) > 0):
        raise ValueError(f"labels hold no defective sample, {_NO_DEFECT}")
    return float(f1_max(scores, labels).threshold)


def pixel_f1_adaptive_threshold(maps, masks, *, exact: bool | None = None,
                                n_bins: int = DEFAULT_BINS, chunk_size: int = 16,
                                disable: bool = False) -> float:
    """The pixel threshold maximising pixel F1 of ``[N, H, W]`` maps (masks > 0 is defect).

    ``exact=None`` sorts all pixels up to ``EXACT_PIXEL_LIMIT`` and uses histograms above
    (the threshold is then the lowest score of a bin). Raises ``ValueError`` without defect
    pixels.
    """
    if exact is None:
        exact = pixel_count(maps) <= EXACT_PIXEL_LIMIT
    if exact:
        masks = np.asarray(masks)
        if not np.any(masks > 0):
            raise ValueError(f"masks hold no defect pixel, {_NO_DEFECT}")
        return float(pixel_ranking_metrics(maps, masks).f1.threshold)
    hist = pixel_histograms(maps, masks, n_bins=n_bins, chunk_size=chunk_size, disable=disable)
    if hist.defect.sum() == 0:
        raise ValueError(f"masks hold no defect pixel, {_NO_DEFECT}")
    return binned_pixel_f1_max(hist)[1]


def quantile_threshold(normal_scores, quantile: float = 0.99) -> float:
    """The ``quantile`` of scores of normal samples, for validation splits without defects.

    ``quantile=1`` gives the largest normal score: no validation sample is flagged.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    scores = np.asarray(normal_scores, np.float64)
    if scores.size == 0:
        raise ValueError("normal_scores is empty")
    check_finite("normal_scores", scores)
    return float(np.quantile(scores, quantile))
