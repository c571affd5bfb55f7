"""All evaluation metrics of one test set in one call."""

from __future__ import annotations

import numpy as np

from anomjax.metrics._checks import (
    check_binary_labels,
    check_finite,
    check_ndim,
    check_same_shape,
    pixel_count,
)
from anomjax.metrics.binned import (
    DEFAULT_BINS,
    binned_aupro,
    binned_pixel_auroc,
    binned_pixel_average_precision,
    pixel_histograms,
)
from anomjax.metrics.pro import aupro
from anomjax.metrics.ranking import _ranked, ranking_metrics

EXACT_PIXEL_LIMIT = 2**23
"""Above this many pixels :func:`compute_metrics` switches to the memory-bounded metrics."""

METRIC_KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
               "pixel_aupro")


def compute_metrics(image_scores, labels, maps, masks, *, exact: bool | None = None,
                    max_fpr: float = 0.3, n_bins: int = DEFAULT_BINS, chunk_size: int = 16,
                    disable: bool = False) -> dict[str, float]:
    """Image AUROC, AP and F1-max, and pixel AUROC, AP and AUPRO of one test set.

    Args:
      image_scores: ``[N]`` image anomaly scores.
      labels: ``[N]`` 0/1, 1 = defective.
      maps: ``[N, H, W]`` pixel anomaly maps (a numpy memory map is fine).
      masks: ``[N, H, W]`` ground truth, > 0 is defect.
      exact: sort-based exact pixel metrics (True), histogram-based bounded-memory ones
        (False, :mod:`anomjax.metrics.binned`), or exact up to ``EXACT_PIXEL_LIMIT`` pixels
        (None).
      max_fpr: AUPRO integration limit.
      n_bins, chunk_size: histogram bins and images per chunk of the bounded metrics.
      disable: turn the progress bars of the bounded metrics off.

    Returns:
      ``{key: float}`` for the keys in :data:`METRIC_KEYS`. A metric undefined for a single
      class is NaN with an ``UndefinedMetricWarning``; malformed input raises ``ValueError``.
    """
    image_scores = np.asarray(image_scores)
    labels = np.asarray(labels)
    check_ndim("image_scores", image_scores, 1, "[N]")
    check_same_shape("image_scores", image_scores, "labels", labels)
    check_finite("image_scores", image_scores)
    check_binary_labels("labels", labels)
    if len(maps) != len(image_scores):
        raise ValueError(f"maps holds {len(maps)} images but image_scores holds "
                         f"{len(image_scores)}")
    if len(masks) != len(maps):
        raise ValueError(f"maps holds {len(maps)} images but masks holds {len(masks)}")
    image = ranking_metrics(image_scores, labels)
    result = {
        "image_auroc": image.auroc,
        "image_ap": image.average_precision,
        "image_f1max": image.f1.f1,
    }
    n_pixels = pixel_count(maps)
    if exact is None:
        exact = n_pixels <= EXACT_PIXEL_LIMIT
    if exact:
        maps = np.asarray(maps)
        masks = np.asarray(masks)
        pixel = _ranked(maps, masks, pixels=True, wanted=("auroc", "average_precision"))
        result["pixel_auroc"] = pixel.auroc
        result["pixel_ap"] = pixel.average_precision
        result["pixel_aupro"] = aupro(maps, masks, max_fpr)
    else:
        hist = pixel_histograms(maps, masks, n_bins=n_bins, chunk_size=chunk_size,
                                disable=disable)
        result["pixel_auroc"] = binned_pixel_auroc(hist)
        result["pixel_ap"] = binned_pixel_average_precision(hist)
        result["pixel_aupro"] = binned_aupro(hist, max_fpr)
    return {key: float(value) for key, value in result.items()}
