"""Shared map post-processing against SciPy, jitted and not."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import ndimage

from anomjax.scoring import gaussian_blur, to_scores, upsample


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy(jit, sigma):
    maps = np.random.default_rng(0).random((2, 40, 33)).astype(np.float32)
    blur = jax.jit(gaussian_blur, static_argnums=1) if jit else gaussian_blur
    got = np.asarray(blur(maps, sigma))
    want = np.stack([ndimage.gaussian_filter(m, sigma, mode="reflect", truncate=4.0)
                     for m in maps])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_zero_sigma_is_identity():
    maps = np.random.default_rng(1).random((1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(gaussian_blur(maps, 0.0)), maps)


def test_upsample_keeps_constant_and_shape():
    maps = np.full((3, 4, 5), 2.5, np.float32)
    out = np.asarray(upsample(maps, (16, 20)))
    assert out.shape == (3, 16, 20)
    np.testing.assert_allclose(out, 2.5)


def test_to_scores_image_score_is_max_of_smoothed_map():
    patch = np.zeros((2, 8, 8), np.float32)
    patch[1, 3, 3] = 1.0
    scores = to_scores(patch, (32, 32), sigma=2.0)
    assert scores.maps.shape == (2, 32, 32)
    np.testing.assert_allclose(np.asarray(scores.image), np.asarray(scores.maps).max(axis=(1, 2)))
    assert float(scores.image[1]) > float(scores.image[0])
