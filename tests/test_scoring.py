"""Shared map post-processing against SciPy, jitted and not."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from numpy_reference import torch_bilinear
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


@pytest.mark.parametrize(("size", "sigma_side", "want_sigma"),
                         [((64, 80), 256, 1.0), ((112, 224), 224, 2.0), ((40, 40), 0, 4.0)])
def test_sigma_set_at_an_image_side_scales_with_the_shorter_side(size, sigma_side, want_sigma):
    maps = np.random.default_rng(3).random((1, *size)).astype(np.float32)
    got = np.asarray(gaussian_blur(maps, 4.0, sigma_side))
    want = ndimage.gaussian_filter(maps[0], want_sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(got[0], want, atol=1e-5)


def test_zero_sigma_is_identity():
    maps = np.random.default_rng(1).random((1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(gaussian_blur(maps, 0.0)), maps)


@pytest.mark.parametrize(("shape", "size"), [((4, 5), (16, 20)), ((7, 5), (13, 32)),
                                             ((13, 6), (100, 17))])
def test_upsample_is_torch_bilinear_align_corners_false(shape, size):
    maps = np.random.default_rng(2).random((2, *shape)).astype(np.float32)  # non-constant
    got = np.asarray(upsample(maps, size))
    assert got.shape == (2, *size)
    np.testing.assert_allclose(got, torch_bilinear(maps, size), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("shape", "size"), [((4, 5), (16, 20)), ((13, 6), (100, 17))])
def test_upsample_align_corners_is_scipy_zoom_of_corner_centres(shape, size):
    """``align_corners=True`` (PyTorch's): corner pixel centres aligned, as SciPy's linear
    ``zoom`` with its default ``grid_mode=False``."""
    maps = np.random.default_rng(3).random((2, *shape)).astype(np.float32)
    got = np.asarray(upsample(maps, size, align_corners=True))
    want = np.stack([ndimage.zoom(m.astype(np.float64), (size[0] / shape[0], size[1] / shape[1]),
                                  order=1, grid_mode=False) for m in maps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, np.asarray(upsample(maps, size)), atol=1e-3)


def test_to_scores_image_score_is_max_of_smoothed_map():
    patch = np.zeros((2, 8, 8), np.float32)
    patch[1, 3, 3] = 1.0
    scores = to_scores(patch, (32, 32), sigma=2.0)
    assert scores.maps.shape == (2, 32, 32)
    np.testing.assert_allclose(np.asarray(scores.image), np.asarray(scores.maps).max(axis=(1, 2)))
    assert float(scores.image[1]) > float(scores.image[0])
