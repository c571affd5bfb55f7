"""Anomaly-detection metrics: image AUROC/AP/F1-max, pixel AUROC/AP, PRO/AUPRO.

Conventions shared by every function:

* higher scores mean more anomalous; labels are 1 for defective, masks > 0 for defect;
* tied scores are one threshold step (as scikit-learn);
* NaN/inf scores, labels other than 0/1 and mismatched shapes raise ``ValueError``;
* a metric undefined for its input (a single class, no defect region) is NaN with an
  :class:`UndefinedMetricWarning` -- never an exception, so a per-defect-type breakdown
  or a tiny test set still evaluates;
* the ranking functions are jittable; under ``jax.jit`` checks cannot run and undefined or
  non-finite input gives NaN;
* exact metrics sort all scores; :mod:`.binned` streams pixels into histograms in bounded
  memory, and :func:`compute_metrics` picks it above ``EXACT_PIXEL_LIMIT`` pixels.
"""

from anomjax.metrics._checks import UndefinedMetricWarning
from anomjax.metrics.binned import (
    PixelHistograms,
    binned_aupro,
    binned_pixel_auroc,
    binned_pixel_average_precision,
    binned_pixel_f1_max,
    binned_pro_curve,
    pixel_histograms,
)
from anomjax.metrics.compute import (
    EXACT_PIXEL_LIMIT,
    METRIC_KEYS,
    compute_metrics,
    subset_metrics,
)
from anomjax.metrics.normalization import NormalizationStats, normalization_stats, normalize
from anomjax.metrics.pro import aupro, aupro_from_weights, component_weights, pro_curve
from anomjax.metrics.ranking import (
    F1Max,
    RankingMetrics,
    auroc,
    average_precision,
    f1_max,
    pixel_auroc,
    pixel_average_precision,
    pixel_ranking_metrics,
    ranking_metrics,
)
from anomjax.metrics.thresholds import (
    f1_adaptive_threshold,
    pixel_f1_adaptive_threshold,
    quantile_threshold,
)

__all__ = [
    "EXACT_PIXEL_LIMIT",
    "METRIC_KEYS",
    "F1Max",
    "NormalizationStats",
    "PixelHistograms",
    "RankingMetrics",
    "UndefinedMetricWarning",
    "aupro",
    "aupro_from_weights",
    "auroc",
    "average_precision",
    "binned_aupro",
    "binned_pixel_auroc",
    "binned_pixel_average_precision",
    "binned_pixel_f1_max",
    "binned_pro_curve",
    "component_weights",
    "compute_metrics",
    "f1_adaptive_threshold",
    "f1_max",
    "normalization_stats",
    "normalize",
    "pixel_auroc",
    "pixel_average_precision",
    "pixel_f1_adaptive_threshold",
    "pixel_histograms",
    "pixel_ranking_metrics",
    "pro_curve",
    "quantile_threshold",
    "ranking_metrics",
    "subset_metrics",
]
