"""Resize, crop and normalisation of images and masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import antialiased_bilinear

from anomjax.data import center_crop, denormalize, normalize, resize_image, resize_mask
from anomjax.data.transforms import prepare


def test_resize_uint8_and_float_agree():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    small = resize_image(img, 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.uint8
    as_float = resize_image(img.astype(np.float32) / 255.0, (16, 16))
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float * 255, small, atol=1.0)


@pytest.mark.parametrize("in_hw,out_hw", [((300, 400), (256, 256)), ((37, 53), (16, 70))])
def test_resize_dtypes_against_the_antialiased_bilinear_formula(in_hw, out_hw):
    image = np.random.default_rng(3).integers(0, 256, (*in_hw, 3), dtype=np.uint8)
    reference = antialiased_bilinear(image / 255.0, out_hw)
    as_float, _ = prepare(image, None, out_hw, None, resize_dtype="float32")
    np.testing.assert_allclose(as_float, reference, atol=2e-6)
    # uint8: the same filter (Pillow's fixed-point weights), then rounded to 8 bits.
    as_uint8, _ = prepare(image, None, out_hw, None, resize_dtype="uint8")
    np.testing.assert_allclose(as_uint8, reference, atol=1.0 / 255)
    np.testing.assert_allclose(as_uint8 * 255, np.round(as_uint8 * 255), atol=1e-4)
    assert np.abs(as_float * 255 - np.round(as_float * 255)).max() > 0.4  # not rounded
    with pytest.raises(ValueError, match="resize_dtype must be one of"):
        prepare(image, None, out_hw, None, resize_dtype="float16")


def test_resize_is_antialiased():
    # A 1-pixel checkerboard downsampled by 4 averages to grey, not to aliased 0/255 values.
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    out = resize_image(np.repeat(board[..., None], 3, axis=2), 16)
    assert np.all(np.abs(out.astype(int) - 128) <= 2)


def test_mask_resize_is_nearest_and_binary():
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 5:25] = 1
    out = resize_mask(mask, (15, 20))
    assert set(np.unique(out)) == {0, 1}
    np.testing.assert_array_equal(out, mask[1::2, 1::2])  # pixel-centre sampling


def test_center_crop():
    arr = np.arange(10 * 12).reshape(10, 12)
    out = center_crop(arr, (4, 6))
    np.testing.assert_array_equal(out, arr[3:7, 3:9])
    with pytest.raises(ValueError, match="larger"):
        center_crop(arr, 11)


def test_prepare_resizes_then_crops_image_and_mask():
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), np.uint8)
    mask[:, 35:] = 1
    out, m = prepare(img, mask, 32, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert m.shape == (24, 24) and m[:, :11].max() == 0 and m[:, 13:].min() == 1


def test_normalisation_presets():
    x = np.random.default_rng(2).random((2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(normalize(x, "lite"), (x * 255 - 127) / 128, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize(x, "imagenet")[..., 0], (x[..., 0] - 0.485) / 0.229,
                               rtol=1e-5)
    np.testing.assert_allclose(denormalize(normalize(x, "imagenet"), "imagenet"), x, atol=1e-6)
    jitted = jax.jit(lambda a: normalize(a, "lite"))(jnp.asarray(x))
    np.testing.assert_allclose(jitted, normalize(x, "lite"), atol=1e-5)
    with pytest.raises(ValueError, match="unknown normalisation preset"):
        normalize(x, "nope")
