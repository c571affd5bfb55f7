"""Exact AUROC, AP and F1-max against scikit-learn, jitted and not, with edge cases."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomjax.metrics import (
    UndefinedMetricWarning,
    auroc,
    average_precision,
    f1_max,
    pixel_auroc,
    pixel_average_precision,
)

MODES = {"eager": lambda f: f, "jit": jax.jit}


def _scores_labels(seed: int, n: int = 300, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int32)
    scores = rng.normal(size=n) + 0.8 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # ties, also across the two classes
    return scores.astype(np.float32), labels


def _sklearn_f1_max(scores, labels):
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return f1.max(), thresholds, f1[:-1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_auroc_ap_match_sklearn(mode, decimals):
    scores, labels = _scores_labels(seed=3, decimals=decimals)
    wrap = MODES[mode]
    np.testing.assert_allclose(wrap(auroc)(scores, labels), roc_auc_score(labels, scores),
                               atol=1e-6)
    np.testing.assert_allclose(wrap(average_precision)(scores, labels),
                               average_precision_score(labels, scores), atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decimals", [None, 1])
def test_f1_max_matches_sklearn_and_its_threshold_reaches_it(mode, decimals):
    scores, labels = _scores_labels(seed=4, decimals=decimals)
    best, thresholds, f1_at = _sklearn_f1_max(scores, labels)
    result = MODES[mode](f1_max)(scores, labels)
    np.testing.assert_allclose(result.f1, best, atol=1e-6)
    # The threshold is a score value, reaches the best F1, and is the highest that does.
    t = float(result.threshold)
    assert t in scores
    predicted = scores >= t
    tp = np.sum(predicted & (labels == 1))
    assert 2 * tp / (predicted.sum() + labels.sum()) == pytest.approx(best, abs=1e-6)
    assert t == pytest.approx(thresholds[np.isclose(f1_at, best, atol=1e-7)].max())


def test_all_tied_scores_give_chance_level():
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.full(5, 0.5, np.float32)
    assert float(auroc(scores, labels)) == pytest.approx(0.5)
    assert float(average_precision(scores, labels)) == pytest.approx(0.6)
    assert float(average_precision(scores, labels)) == pytest.approx(
        average_precision_score(labels, scores))


def test_perfect_and_inverted_rankings():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9], np.float32)
    assert float(auroc(scores, labels)) == 1.0
    assert float(auroc(-scores, labels)) == 0.0
    assert float(average_precision(scores, labels)) == 1.0
    assert float(f1_max(scores, labels).f1) == 1.0
    assert float(f1_max(scores, labels).threshold) == pytest.approx(0.8)


def test_single_class_is_nan_with_a_warning():
    scores = np.array([0.1, 0.4, 0.3], np.float32)
    with pytest.warns(UndefinedMetricWarning, match="single class"):
        assert np.isnan(auroc(scores, np.zeros(3, int)))
    with pytest.warns(UndefinedMetricWarning, match="single class"):
        assert np.isnan(auroc(scores, np.ones(3, int)))
    with pytest.warns(UndefinedMetricWarning, match="no positive"):
        assert np.isnan(average_precision(scores, np.zeros(3, int)))
    with pytest.warns(UndefinedMetricWarning, match="no positive"):
        result = f1_max(scores, np.zeros(3, int))
    assert np.isnan(result.f1) and np.isnan(result.threshold)
    # Only positives: AP and F1 are well defined (every prediction is right).
    assert float(average_precision(scores, np.ones(3, int))) == 1.0
    assert np.isnan(jax.jit(auroc)(scores, np.zeros(3, int)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise_eagerly_and_give_nan_under_jit(bad):
    scores = np.array([0.1, bad, 0.3, 0.2], np.float32)
    labels = np.array([0, 1, 0, 1])
    for fn in (auroc, average_precision, f1_max):
        with pytest.raises(ValueError, match=r"scores contains .* \(first at index \(1,\)\)"):
            fn(scores, labels)
    assert np.isnan(jax.jit(auroc)(scores, labels))
    assert np.isnan(jax.jit(average_precision)(scores, labels))
    assert np.isnan(jax.jit(f1_max)(scores, labels).f1)


def test_bad_labels_and_shapes_raise():
    scores = np.array([0.1, 0.2, 0.3], np.float32)
    with pytest.raises(ValueError, match=r"only 0 \(normal\) and 1 \(defective\), found \[2\]"):
        auroc(scores, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        auroc(scores, np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        auroc(np.zeros(0, np.float32), np.zeros(0, int))


@pytest.mark.parametrize("mode", MODES)
def test_pixel_metrics_match_sklearn_on_flattened_pixels(mode, tied_blobs):
    _, _, maps, masks = tied_blobs
    masks = masks * 255  # masks are binarised: > 0 is defect
    flat_scores, flat_labels = maps.ravel(), (masks.ravel() > 0)
    wrap = MODES[mode]
    np.testing.assert_allclose(wrap(pixel_auroc)(maps, masks),
                               roc_auc_score(flat_labels, flat_scores), atol=1e-6)
    np.testing.assert_allclose(wrap(pixel_average_precision)(maps, masks),
                               average_precision_score(flat_labels, flat_scores), atol=1e-6)


def test_pixel_metrics_without_defect_pixels_are_nan(blobs):
    _, _, maps, masks = blobs
    with pytest.warns(UndefinedMetricWarning, match="defect pixels=0"):
        assert np.isnan(pixel_auroc(maps, np.zeros_like(masks)))
    with pytest.warns(UndefinedMetricWarning, match="no defect pixel"):
        assert np.isnan(pixel_average_precision(maps, np.zeros_like(masks)))
