"""All evaluation metrics of one test set, or of several subsets of it, in one call."""

from __future__ import annotations

from collections.abc import Mapping

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
from anomjax.metrics.curves import partial_area, sorted_on_host
from anomjax.metrics.pro import _sorted_pro, component_weights, warn_undefined_pro
from anomjax.metrics.ranking import (
    _sorted_ranking_metrics,
    ranking_metrics,
    warn_undefined_ranking,
)

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
    everything = np.ones(len(np.asarray(image_scores).reshape(-1)), bool)
    return subset_metrics(image_scores, labels, maps, masks, {"all": everything}, exact=exact,
                          max_fpr=max_fpr, n_bins=n_bins, chunk_size=chunk_size,
                          disable=disable)["all"]


def subset_metrics(image_scores, labels, maps, masks, subsets: Mapping[str, np.ndarray], *,
                   exact: bool | None = None, max_fpr: float = 0.3, n_bins: int = DEFAULT_BINS,
                   chunk_size: int = 16, disable: bool = False) -> dict[str, dict[str, float]]:
    """:func:`compute_metrics` of several subsets of one test set (e.g. one per defect type).

    ``subsets`` maps a name to a boolean ``[N]`` selection of the test images; the other
    arguments are those of :func:`compute_metrics`. The exact pixel metrics sort all pixels
    once and take each subset's pixels from that one order (still descending, so the same
    numbers as sorting the subset on its own). The bounded metrics run once per subset.

    Returns:
      ``{name: {key: float}}`` in the order of ``subsets``.
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
    selections = {name: _selection(name, keep, len(image_scores))
                  for name, keep in subsets.items()}
    results = {}
    for name, keep in selections.items():
        image = ranking_metrics(image_scores[keep], labels[keep])
        results[name] = {"image_auroc": image.auroc, "image_ap": image.average_precision,
                         "image_f1max": image.f1.f1}
    if exact is None:
        exact = pixel_count(maps) <= EXACT_PIXEL_LIMIT
    if exact:
        pixel = _exact_pixel_metrics(np.asarray(maps), np.asarray(masks), selections, max_fpr)
    else:
        pixel = {name: _binned_pixel_metrics(maps, masks, keep, max_fpr, n_bins, chunk_size,
                                             disable) for name, keep in selections.items()}
    return {name: {key: float(value) for key, value in {**results[name], **pixel[name]}.items()}
            for name in selections}


def _selection(name: str, keep, n: int) -> np.ndarray:
    """``keep`` as a boolean ``[n]`` array, or a ``ValueError`` naming the subset."""
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.shape != (n,):
        raise ValueError(f"subset {name!r} must be a boolean [{n}] selection of the test "
                         f"images, got dtype {keep.dtype} and shape {keep.shape}")
    if not keep.any():
        raise ValueError(f"subset {name!r} selects no image")
    return keep


def _binned_pixel_metrics(maps, masks, keep: np.ndarray, max_fpr: float, n_bins: int,
                          chunk_size: int, disable: bool) -> dict[str, float]:
    """The bounded-memory pixel metrics of the images selected by ``keep``."""
    if not keep.all():
        maps, masks = np.asarray(maps)[keep], np.asarray(masks)[keep]
    hist = pixel_histograms(maps, masks, n_bins=n_bins, chunk_size=chunk_size, disable=disable)
    return {"pixel_auroc": binned_pixel_auroc(hist),
            "pixel_ap": binned_pixel_average_precision(hist),
            "pixel_aupro": binned_aupro(hist, max_fpr)}


def _exact_pixel_metrics(maps: np.ndarray, masks: np.ndarray, subsets: dict[str, np.ndarray],
                         max_fpr: float) -> dict[str, dict[str, float]]:
    """Exact pixel AUROC, AP and AUPRO of each subset of ``[N, H, W]`` maps, from one sort."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    check_ndim("maps", maps, 3, "[N, H, W]")
    check_same_shape("maps", maps, "masks", masks)
    check_finite("maps", maps)
    n = len(maps)
    defect = masks > 0
    weights, _ = component_weights(masks)  # 1 / |c| on each region: they sum to 1 per region
    regions = np.rint(weights.reshape(n, -1).sum(axis=1, dtype=np.float64)).astype(np.int64)
    defect_pixels = defect.reshape(n, -1).sum(axis=1)
    per_image = maps[0].size
    all_scores, (all_classes, all_weights, all_images) = sorted_on_host(
        maps, [defect.astype(np.int8), weights, np.repeat(np.arange(n, dtype=np.int32),
                                                          per_image)])
    out = {}
    for name, keep in subsets.items():
        n_pos = int(defect_pixels[keep].sum())
        n_neg = int(keep.sum()) * per_image - n_pos
        n_regions = int(regions[keep].sum())
        warn_undefined_ranking(n_pos, n_neg, pixels=True, wanted=("auroc", "average_precision"))
        warn_undefined_pro(n_regions, n_neg > 0)
        scores, classes, region_weights = all_scores, all_classes, all_weights
        if not keep.all():  # the subset's pixels, still in descending order
            member = keep[all_images]
            scores, classes, region_weights = (a[member] for a in (scores, classes,
                                                                   region_weights))
        ranking = _sorted_ranking_metrics(scores, classes)
        false_pos, pro, _ = _sorted_pro(scores, region_weights, (classes == 0).astype(np.int8),
                                        n_regions)
        out[name] = {"pixel_auroc": ranking.auroc, "pixel_ap": ranking.average_precision,
                     "pixel_aupro": partial_area(false_pos, pro, max_fpr) / max_fpr}
    return out
