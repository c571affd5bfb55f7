"""compute_metrics: keys, agreement with the individual metrics, exact/bounded choice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from anomjax.metrics import (
    METRIC_KEYS,
    UndefinedMetricWarning,
    aupro,
    compute_metrics,
    subset_metrics,
)
from anomjax.metrics import compute as compute_module
from tests.metrics.references import reference_aupro


def test_exact_metrics_match_references(blobs):
    scores, labels, maps, masks = blobs
    result = compute_metrics(scores, labels, maps, masks, exact=True)
    assert tuple(result) == METRIC_KEYS
    assert all(isinstance(v, float) for v in result.values())
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert result["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert result["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert result["pixel_ap"] == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert result["pixel_aupro"] == pytest.approx(float(aupro(maps, masks)), abs=1e-7)


def test_bounded_is_chosen_above_the_pixel_limit(blobs, monkeypatch):
    scores, labels, maps, masks = blobs
    exact = compute_metrics(scores, labels, maps, masks, exact=True)
    bounded = compute_metrics(scores, labels, maps, masks, exact=False, disable=True)
    for key in METRIC_KEYS:
        assert bounded[key] == pytest.approx(exact[key], abs=1e-4), key
    monkeypatch.setattr(compute_module, "EXACT_PIXEL_LIMIT", maps.size - 1)
    auto = compute_metrics(scores, labels, maps, masks, n_bins=64, disable=True)
    assert auto == compute_metrics(scores, labels, maps, masks, exact=False, n_bins=64,
                                   disable=True)
    assert auto != exact  # 64 bins: visibly the bounded path


def test_same_input_same_numbers(blobs):
    first = compute_metrics(*blobs, exact=False, disable=True)
    assert compute_metrics(*blobs, exact=False, disable=True) == first


def test_normal_only_test_set_gives_nan_with_warnings(blobs):
    scores, labels, maps, masks = blobs
    keep = labels == 0
    with pytest.warns(UndefinedMetricWarning) as record:
        result = compute_metrics(scores[keep], labels[keep], maps[keep], masks[keep])
    assert all(np.isnan(v) for v in result.values())
    assert len(record) == 6


def test_bad_input_raises_clear_errors(blobs):
    scores, labels, maps, masks = blobs
    with pytest.raises(ValueError, match="maps holds 5 images but image_scores holds 6"):
        compute_metrics(scores, labels, maps[:5], masks[:5])
    with pytest.raises(ValueError, match="maps holds 6 images but masks holds 5"):
        compute_metrics(scores, labels, maps, masks[:5])
    with pytest.raises(ValueError, match="image_scores contains 1 NaN"):
        compute_metrics(np.where(np.arange(6) == 1, np.nan, scores), labels, maps, masks)
    with pytest.raises(ValueError, match=r"labels must hold only 0 .* found \[255\]"):
        compute_metrics(scores, labels * 255, maps, masks)


@pytest.mark.parametrize("fixture", ["blobs", "tied_blobs"])
def test_subset_metrics_match_references_on_each_subset(fixture, request, make_blobs):
    """One shared sort gives each subset the numbers of scikit-learn and the PRO reference
    loop run on that subset alone (ties included), normal-only images mixed in."""
    scores, labels, maps, masks = make_blobs(seed=0 if fixture == "blobs" else 1, n=9,
                                             levels=None if fixture == "blobs" else 12)
    subsets = {"first": np.arange(9) < 5, "odd_and_zero": (np.arange(9) % 2 == 1)
               | (np.arange(9) == 0), "all": np.ones(9, bool)}
    result = subset_metrics(scores, labels, maps, masks, subsets, exact=True)
    assert list(result) == list(subsets)
    for name, keep in subsets.items():
        got = result[name]
        assert tuple(got) == METRIC_KEYS
        assert got["image_auroc"] == pytest.approx(roc_auc_score(labels[keep], scores[keep]),
                                                   abs=1e-6)
        assert got["pixel_auroc"] == pytest.approx(
            roc_auc_score(masks[keep].ravel(), maps[keep].ravel()), abs=1e-6)
        assert got["pixel_ap"] == pytest.approx(
            average_precision_score(masks[keep].ravel(), maps[keep].ravel()), abs=1e-6)
        assert got["pixel_aupro"] == pytest.approx(reference_aupro(maps[keep], masks[keep]),
                                                   abs=1e-5)
    bounded = subset_metrics(scores, labels, maps, masks, subsets, exact=False, disable=True)
    assert bounded["first"] == compute_metrics(scores[:5], labels[:5], maps[:5], masks[:5],
                                               exact=False, disable=True)


def test_subset_metrics_warn_per_subset_and_reject_bad_selections(blobs):
    scores, labels, maps, masks = blobs
    normal_only = labels == 0
    with pytest.warns(UndefinedMetricWarning) as record:
        result = subset_metrics(scores, labels, maps, masks,
                                {"normal": normal_only, "all": np.ones(6, bool)})
    assert all(np.isnan(v) for v in result["normal"].values())
    assert not any(np.isnan(v) for v in result["all"].values())
    assert len(record) == 6
    with pytest.raises(ValueError, match="subset 'none' selects no image"):
        subset_metrics(scores, labels, maps, masks, {"none": np.zeros(6, bool)})
    with pytest.raises(ValueError, match=r"subset 'ints' must be a boolean \[6\] selection"):
        subset_metrics(scores, labels, maps, masks, {"ints": np.arange(6)})
