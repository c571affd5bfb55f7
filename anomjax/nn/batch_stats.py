"""BatchNorm running statistics recomputed with the final weights ("precise BN").

During training a BatchNorm layer's running mean and variance are an exponential average of
the statistics of recent batches, each taken with the weights of its own step. When the
weights still move fast at the end of training (few steps, a large learning rate, as in
STPM's SGD at 0.4), that average lags behind the network that is finally scored, and
inference in running-statistics mode no longer matches training. Wu & Johnson ("Rethinking
'Batch' in BatchNorm", 2021) recompute the statistics over the training data with the final
weights; :func:`pooled_batch_stats` does that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np


def pooled_batch_stats(batch_stats_of: Callable[[jax.Array], Any],
                       images: Iterable[np.ndarray]) -> Any:
    """The population mean and variance of every BatchNorm input over all of ``images``.

    Args:
      batch_stats_of: ``images [B, H, W, C] -> batch_stats`` with, in every BatchNorm
        entry, the ``mean`` and biased ``var`` of that batch alone (the input of the layer
        over ``B, h, w``).
      images: the batches to pool, e.g. one pass over the training split.

    Returns:
      ``batch_stats`` of the same structure: per-channel mean and variance pooled over all
      positions of all batches (batches weighted by their size).
    """
    total, count = None, 0
    for batch in images:
        n = int(batch.shape[0])
        weighted = _moments(jax.device_get(batch_stats_of(batch)), n)
        total = weighted if total is None else jax.tree.map(np.add, total, weighted)
        count += n
    if total is None:
        raise ValueError("pooled_batch_stats got no batches")
    return _statistics(total, count)


def _moments(stats: dict[str, Any], weight: int) -> dict[str, Any]:
    """Per BatchNorm entry ``{mean, var}`` -> ``weight * {E[x], E[x^2]}`` in float64."""
    out = {}
    for name, entry in stats.items():
        if set(entry) == {"mean", "var"}:
            mean = np.asarray(entry["mean"], np.float64)
            out[name] = {"mean": weight * mean,
                         "var": weight * (np.asarray(entry["var"], np.float64) + mean * mean)}
        else:
            out[name] = _moments(entry, weight)
    return out


def _statistics(moments: dict[str, Any], count: int) -> dict[str, Any]:
    """Summed ``{E[x], E[x^2]}`` over ``count`` images -> float32 ``{mean, var}``."""
    out = {}
    for name, entry in moments.items():
        if set(entry) == {"mean", "var"}:
            mean = entry["mean"] / count
            var = np.maximum(entry["var"] / count - mean * mean, 0.0)
            out[name] = {"mean": mean.astype(np.float32), "var": var.astype(np.float32)}
        else:
            out[name] = _statistics(entry, count)
    return out
