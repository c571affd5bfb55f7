"""Deployment helpers: F1-adaptive and quantile thresholds, min-max normalisation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from anomjax.metrics import (
    f1_adaptive_threshold,
    normalization_stats,
    normalize,
    pixel_f1_adaptive_threshold,
    quantile_threshold,
)


def _brute_force_f1_threshold(scores, labels):
    """The highest threshold among those with the best F1 (predict ``score >= t``)."""
    best_f1, best_t = -1.0, None
    for t in np.unique(scores)[::-1]:
        predicted = scores >= t
        tp = np.sum(predicted & (labels == 1))
        f1 = 2 * tp / (predicted.sum() + labels.sum())
        if f1 > best_f1 + 1e-12:
            best_f1, best_t = f1, t
    return best_t


def test_f1_adaptive_threshold_is_the_best_f1_threshold():
    rng = np.random.default_rng(7)
    labels = (rng.random(80) < 0.4).astype(np.int32)
    scores = np.round(rng.normal(size=80) + labels, 1).astype(np.float32)
    assert f1_adaptive_threshold(scores, labels) == pytest.approx(
        _brute_force_f1_threshold(scores, labels))


def test_pixel_threshold_exact_and_bounded(tied_blobs, blobs):
    _, _, maps, masks = tied_blobs
    expected = _brute_force_f1_threshold(maps.ravel(), masks.ravel())
    assert pixel_f1_adaptive_threshold(maps, masks, exact=True) == expected
    # With one distinct score per bin the bounded version finds the same score.
    assert pixel_f1_adaptive_threshold(maps, masks, exact=False, n_bins=1100,
                                       disable=True) == pytest.approx(expected)
    _, _, maps, masks = blobs
    exact = pixel_f1_adaptive_threshold(maps, masks, exact=True)
    bounded = pixel_f1_adaptive_threshold(maps, masks, exact=False, disable=True)
    assert bounded == pytest.approx(exact, abs=(maps.max() - maps.min()) / 2**16)


def test_thresholds_need_defects():
    with pytest.raises(ValueError, match="no defective sample"):
        f1_adaptive_threshold(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="no defect pixel"):
        pixel_f1_adaptive_threshold(np.ones((1, 4, 4)), np.zeros((1, 4, 4)), exact=True)


def test_quantile_threshold():
    scores = np.arange(101, dtype=np.float32)
    assert quantile_threshold(scores, 0.99) == pytest.approx(99.0)
    assert quantile_threshold(scores, 1.0) == 100.0
    with pytest.raises(ValueError, match="quantile"):
        quantile_threshold(scores, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        quantile_threshold(np.array([0.0, np.nan]))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_normalize_puts_the_threshold_at_one_half(mode):
    validation = np.array([2.0, 4.0, 6.0, 10.0], np.float32)
    stats = normalization_stats(validation, threshold=5.0)
    fn = normalize if mode == "eager" else jax.jit(normalize)
    out = np.asarray(fn(np.array([5.0, 2.0, 10.0, 1.0, 20.0], np.float32), stats))
    # (x - 5) / (10 - 2) + 0.5, clipped to [0, 1]
    np.testing.assert_allclose(out, [0.5, 0.125, 1.0, 0.0, 1.0])
    maps = np.full((2, 3, 3), 6.0, np.float32)
    np.testing.assert_allclose(fn(maps, stats), np.full((2, 3, 3), 0.625))


def test_normalization_stats_rejects_bad_input():
    with pytest.raises(ValueError, match="all validation scores equal 3.0"):
        normalization_stats(np.full(4, 3.0), threshold=3.0)
    with pytest.raises(ValueError, match="validation_scores contains 1 NaN"):
        normalization_stats(np.array([1.0, np.nan]), threshold=1.0)
    with pytest.raises(ValueError, match="threshold must be finite"):
        normalization_stats(np.array([1.0, 2.0]), threshold=np.nan)
