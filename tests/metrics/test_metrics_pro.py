"""PRO curve and AUPRO against a slow, obvious reference loop, plus hand-made cases."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from anomjax.metrics import (
    UndefinedMetricWarning,
    aupro,
    aupro_from_weights,
    component_weights,
    pro_curve,
)
from tests.metrics.references import reference_aupro


@pytest.mark.parametrize("fixture", ["blobs", "tied_blobs"])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_reference_loop(fixture, max_fpr, request):
    _, _, maps, masks = request.getfixturevalue(fixture)
    assert float(aupro(maps, masks, max_fpr)) == pytest.approx(
        reference_aupro(maps, masks, max_fpr), abs=1e-5)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_aupro_from_weights_is_jittable(mode, blobs):
    _, _, maps, masks = blobs
    weights, k = component_weights(masks)
    fn = aupro_from_weights if mode == "eager" else jax.jit(aupro_from_weights)
    assert float(fn(maps, weights, k, 0.3)) == pytest.approx(reference_aupro(maps, masks),
                                                            abs=1e-5)


def test_pro_curve_hand_computed():
    # Region A: one pixel (score 0.9); region B: three pixels (0.8, 0.1, 0.1); 12 normal
    # pixels of which one scores 0.85 and the rest 0.
    maps = np.zeros((1, 4, 4), np.float32)
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, 0, 0] = 1
    maps[0, 0, 0] = 0.9
    masks[0, 3, 1:] = 1
    maps[0, 3, 1:] = [0.8, 0.1, 0.1]
    maps[0, 1, 2] = 0.85
    fpr, pro, thresholds = pro_curve(maps, masks)
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.85, 0.8, 0.1, 0.0])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 12, 1 / 12, 1 / 12, 1.0], atol=1e-7)
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 2 / 3, 1.0, 1.0], atol=1e-6)


def test_components_are_eight_connected_and_per_image():
    masks = np.zeros((2, 5, 5), np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = 1  # diagonal touch: one region
    masks[1] = masks[0]  # the same region in another image is another component
    weights, k = component_weights(masks)
    assert k == 2
    np.testing.assert_allclose(weights[masks > 0], 1 / 3)
    maps = np.zeros((2, 5, 5), np.float32)
    maps[0, 0, 0] = 1.0  # covers 1/3 of the first region only
    fpr, pro, _ = pro_curve(maps, masks)
    assert pro[1] == pytest.approx((1 / 3 + 0) / 2)  # 4-connectivity would give 0.25


def test_perfect_and_constant_maps():
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[1, 2:5, 2:6] = 1
    assert float(aupro(masks.astype(np.float32), masks)) == pytest.approx(1.0)
    # A constant map is one threshold: the curve is the diagonal from (0, 0) to (1, 1).
    assert float(aupro(np.zeros((2, 8, 8), np.float32), masks)) == pytest.approx(0.15)


def test_empty_masks_of_defective_images_count_as_normal(blobs):
    _, _, maps, masks = blobs
    with_empty = np.concatenate([masks, np.zeros_like(masks[:1])])
    maps_more = np.concatenate([maps, maps[:1] + 3.0])  # high scores on an empty mask
    assert float(aupro(maps_more, with_empty)) == pytest.approx(
        reference_aupro(maps_more, with_empty), abs=1e-5)
    assert float(aupro(maps_more, with_empty)) < float(aupro(maps, masks))


def test_no_region_or_no_normal_pixel_is_nan(blobs):
    _, _, maps, masks = blobs
    with pytest.warns(UndefinedMetricWarning, match="no defect region"):
        assert np.isnan(aupro(maps, np.zeros_like(masks)))
    with pytest.warns(UndefinedMetricWarning, match="no normal pixel"):
        assert np.isnan(aupro(maps, np.ones_like(masks)))


def test_bad_input_raises(blobs):
    _, _, maps, masks = blobs
    bad = maps.copy()
    bad[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"maps contains 1 NaN .* \(2, 3, 4\)"):
        aupro(bad, masks)
    with pytest.raises(ValueError, match="shape"):
        aupro(maps, masks[:, :-1])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        aupro(maps[0], masks[0])
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(maps, masks, 0.0)
