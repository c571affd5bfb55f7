"""Exact ranking metrics: AUROC, average precision and F1-max, for images or pixels.

Each function sorts all scores once (``O(M log M)`` time, a few ``[M]`` buffers), so it is
exact but holds every score in memory; :mod:`.binned` computes the pixel metrics in bounded
memory. Tied scores are one threshold step, as in scikit-learn. Scores are compared in
float32 (JAX's default precision). Eager calls sort and sweep on the host in NumPy
(:func:`~anomjax.metrics.curves.sorted_on_host`); under ``jax.jit`` XLA sorts and sweeps.

All functions are jittable. Called eagerly they check their input: NaN/inf scores, labels
other than 0/1 and shape mismatches raise ``ValueError``; a metric that is undefined for a
single class (AUROC without positives or negatives, AP and F1 without positives) returns
NaN with an :class:`UndefinedMetricWarning`. Under ``jax.jit`` nothing can be raised, so
undefined metrics and non-finite scores give NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.metrics._checks import (
    check_binary_labels,
    check_finite,
    check_same_shape,
    is_traced,
    warn_undefined,
)
from anomjax.metrics.curves import (
    array_namespace,
    average_precision_area,
    cumulate_sorted,
    f1_scores,
    roc_area,
    sort_descending,
    sorted_on_host,
)


class F1Max(NamedTuple):
    """Best F1 over all thresholds and the threshold reaching it (predict ``score >= t``)."""

    f1: jax.Array
    threshold: jax.Array


def _class_counts(scores_name: str, scores, labels_name: str, labels, binary: bool
                  ) -> tuple[int, int]:
    """Validate eager inputs and return ``(n_pos, n_neg)``."""
    check_same_shape(scores_name, scores, labels_name, labels)
    if np.size(scores) == 0:
        raise ValueError(f"{scores_name} is empty")
    check_finite(scores_name, scores)
    labels = np.asarray(labels)
    if binary:
        check_binary_labels(labels_name, labels)
    n_pos = int(np.count_nonzero(labels > 0))
    return n_pos, labels.size - n_pos


def _classes(labels) -> jax.Array:
    """``[M]`` int8 classes: 1 positive, 0 negative (-1: an entry that counts as neither)."""
    return (jnp.asarray(labels) > 0).ravel().astype(jnp.int8)


class RankingMetrics(NamedTuple):
    """AUROC, average precision and F1-max of one set of scores, from a single sort."""

    auroc: jax.Array
    average_precision: jax.Array
    f1: F1Max


def _sorted_ranking_metrics(scores: jax.Array, classes: jax.Array) -> RankingMetrics:
    """All three metrics of descending ``[M]`` scores and their int8 classes (host NumPy for
    NumPy input, else JAX; see :mod:`anomjax.metrics.curves`)."""
    xp = array_namespace(scores, classes)
    pos, neg, _ = cumulate_sorted(scores, (classes == 1).astype(xp.int32),
                                  (classes == 0).astype(xp.int32))
    finite = xp.all(xp.isfinite(scores))
    f1 = f1_scores(pos, neg)
    best = xp.argmax(xp.where(xp.isnan(f1), -1.0, f1))  # first = highest threshold
    f1_best = xp.where(finite, f1[best], xp.nan)
    return RankingMetrics(
        auroc=xp.where(finite, roc_area(pos, neg), xp.nan),
        average_precision=xp.where(finite, average_precision_area(pos, neg), xp.nan),
        f1=F1Max(f1_best, xp.where(xp.isnan(f1_best), xp.nan, scores[best])))


_TITLES = {"auroc": "AUROC", "average_precision": "AP", "f1": "F1-max"}


def _ranked(scores, labels, *, pixels: bool, wanted: tuple[str, ...]) -> RankingMetrics:
    """Check (eagerly), sort, run :func:`_sorted_ranking_metrics`, warn about undefined ones."""
    if is_traced(scores, labels):
        return _sorted_ranking_metrics(*sort_descending(scores, _classes(labels)))
    names = ("maps", "masks") if pixels else ("scores", "labels")
    n_pos, n_neg = _class_counts(names[0], scores, names[1], labels, binary=not pixels)
    warn_undefined_ranking(n_pos, n_neg, pixels=pixels, wanted=wanted)
    flat, (classes,) = sorted_on_host(scores, [(np.asarray(labels) > 0).astype(np.int8)])
    return _sorted_ranking_metrics(flat, classes)


def warn_undefined_ranking(n_pos: int, n_neg: int, *, pixels: bool,
                           wanted: tuple[str, ...] = tuple(_TITLES)) -> None:
    """Warn about each of the ``wanted`` metrics (``"auroc"``, ``"average_precision"``,
    ``"f1"``) that is undefined for ``n_pos`` positives and ``n_neg`` negatives."""
    label_name = "masks" if pixels else "labels"
    counts = (f"defect pixels={n_pos}, normal pixels={n_neg}" if pixels
              else f"n_pos={n_pos}, n_neg={n_neg}")
    for name in wanted:
        title = ("pixel " if pixels else "") + _TITLES[name]
        if name == "auroc" and min(n_pos, n_neg) == 0:
            warn_undefined(title, f"{label_name} hold a single class ({counts})")
        elif name != "auroc" and n_pos == 0:
            positive = "defect pixel" if pixels else "positive (defective) sample"
            warn_undefined(title, f"{label_name} hold no {positive}")


def ranking_metrics(scores: jax.Array, labels: jax.Array) -> RankingMetrics:
    """AUROC, AP and F1-max of ``[N]`` scores for ``[N]`` 0/1 labels, sorting only once."""
    return _ranked(scores, labels, pixels=False, wanted=tuple(_TITLES))


def pixel_ranking_metrics(maps: jax.Array, masks: jax.Array) -> RankingMetrics:
    """Pixel AUROC, AP and F1-max of ``[N, H, W]`` maps (masks > 0 is defect), one sort."""
    return _ranked(maps, masks, pixels=True, wanted=tuple(_TITLES))


def auroc(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Area under the ROC curve of ``[N]`` scores for ``[N]`` 0/1 labels (1 = defective)."""
    return _ranked(scores, labels, pixels=False, wanted=("auroc",)).auroc


def average_precision(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Average precision (area under the step precision-recall curve), as scikit-learn."""
    return _ranked(scores, labels, pixels=False,
                   wanted=("average_precision",)).average_precision


def f1_max(scores: jax.Array, labels: jax.Array) -> F1Max:
    """The best F1 over all thresholds and its threshold.

    Among thresholds reaching the same best F1, the highest is returned. A sample is
    predicted defective when ``score >= threshold``.
    """
    return _ranked(scores, labels, pixels=False, wanted=("f1",)).f1


def pixel_auroc(maps: jax.Array, masks: jax.Array) -> jax.Array:
    """AUROC over all pixels of ``[N, H, W]`` maps; ``masks`` ``[N, H, W]`` > 0 is defect."""
    return _ranked(maps, masks, pixels=True, wanted=("auroc",)).auroc


def pixel_average_precision(maps: jax.Array, masks: jax.Array) -> jax.Array:
    """Average precision over all pixels of ``[N, H, W]`` maps; ``masks`` > 0 is defect."""
    return _ranked(maps, masks, pixels=True, wanted=("average_precision",)).average_precision
