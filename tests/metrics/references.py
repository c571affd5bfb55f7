"""Slow, obvious reference implementations the metric tests compare against."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def reference_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Threshold by threshold, exactly as the definition reads (float64, no cleverness)."""
    components = []
    for i in range(len(masks)):
        labels, n = ndimage.label(masks[i] > 0, structure=np.ones((3, 3)))
        components += [(i, labels == k) for k in range(1, n + 1)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append(above[normal].mean())
        pros.append(np.mean([above[i][region].mean() for i, region in components]))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # interpolate at exactly max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr
