"""Memory-bounded (histogram) pixel metrics against the exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from anomjax.metrics import (
    UndefinedMetricWarning,
    aupro,
    binned_aupro,
    binned_pixel_auroc,
    binned_pixel_average_precision,
    binned_pixel_f1_max,
    binned_pro_curve,
    f1_max,
    pixel_auroc,
    pixel_average_precision,
    pixel_histograms,
    pro_curve,
)


def _binned(hist):
    return (float(binned_pixel_auroc(hist)), float(binned_pixel_average_precision(hist)),
            float(binned_aupro(hist)))


def _exact(maps, masks):
    return (float(pixel_auroc(maps, masks)), float(pixel_average_precision(maps, masks)),
            float(aupro(maps, masks)))


def test_default_bins_agree_with_exact_metrics(make_blobs):
    _, _, maps, masks = make_blobs(seed=5)
    hist = pixel_histograms(maps, masks, disable=True)
    np.testing.assert_allclose(_binned(hist), _exact(maps, masks), atol=1e-4)


def test_one_bin_per_distinct_score_is_exact(tied_blobs):
    _, _, maps, masks = tied_blobs  # 12 integer levels 0..11
    hist = pixel_histograms(maps, masks, n_bins=1100, chunk_size=4, disable=True)
    np.testing.assert_allclose(_binned(hist), _exact(maps, masks), atol=1e-6)
    f1, threshold = binned_pixel_f1_max(hist)
    exact = f1_max(maps.ravel(), masks.ravel())
    assert f1 == pytest.approx(float(exact.f1), abs=1e-6)
    assert threshold == pytest.approx(float(exact.threshold), abs=1e-6)
    fpr, pro, thresholds = binned_pro_curve(hist)
    fpr_exact, pro_exact, thresholds_exact = pro_curve(maps, masks)
    filled = np.flatnonzero(np.diff(fpr) + np.diff(pro) > 0) + 1  # drop empty bins
    np.testing.assert_allclose(fpr[filled], fpr_exact[1:], atol=1e-6)
    np.testing.assert_allclose(pro[filled], pro_exact[1:], atol=1e-6)
    np.testing.assert_allclose(thresholds[filled], thresholds_exact[1:], atol=1e-6)


def test_coarse_bins_merge_scores_as_ties(blobs):
    _, _, maps, masks = blobs
    coarse = _binned(pixel_histograms(maps, masks, n_bins=64, disable=True))
    exact = _exact(maps, masks)
    assert coarse != pytest.approx(exact, abs=1e-4)  # 64 bins lose resolution...
    np.testing.assert_allclose(coarse, exact, atol=0.02)  # ...but stay close


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_histograms_do_not_depend_on_chunking_or_container(chunk_size, blobs, tmp_path):
    _, _, maps, masks = blobs
    reference = pixel_histograms(maps, masks, chunk_size=6, disable=True)
    on_disk = np.lib.format.open_memmap(tmp_path / "maps.npy", "w+", np.float32, maps.shape)
    on_disk[:] = maps
    for container in (maps, on_disk, list(maps)):
        hist = pixel_histograms(container, list(masks), chunk_size=chunk_size, disable=True)
        np.testing.assert_array_equal(hist.defect, reference.defect)
        np.testing.assert_array_equal(hist.normal, reference.normal)
        np.testing.assert_allclose(hist.pro_weight, reference.pro_weight, rtol=1e-6)
        assert hist.n_components == reference.n_components


def test_bad_input_raises(blobs):
    _, _, maps, masks = blobs
    bad = maps.copy()
    bad[4, 0, 1] = np.inf
    with pytest.raises(ValueError, match=r"1 infinite .* chunk of images starting at 4"):
        pixel_histograms(bad, masks, chunk_size=2, disable=True)
    with pytest.raises(ValueError, match="6 images but masks holds 5"):
        pixel_histograms(maps, masks[:5], disable=True)
    with pytest.raises(ValueError, match="same shape"):
        pixel_histograms(maps, masks[:, 1:], disable=True)
    with pytest.raises(ValueError, match="n_bins"):
        pixel_histograms(maps, masks, n_bins=1, disable=True)


def test_single_class_is_nan_with_a_warning(blobs):
    _, _, maps, masks = blobs
    hist = pixel_histograms(maps, np.zeros_like(masks), disable=True)
    with pytest.warns(UndefinedMetricWarning, match="no defect pixel"):
        assert np.isnan(binned_pixel_auroc(hist))
    with pytest.warns(UndefinedMetricWarning, match="no defect region"):
        assert np.isnan(binned_aupro(hist))
