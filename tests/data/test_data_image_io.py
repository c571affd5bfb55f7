"""Reading images and masks of every common format and mode, and the errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomjax.data import DataError, image_size, read_image, read_mask


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "tif"])
def test_rgb_formats_round_trip(tmp_path, ext):
    arr = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    path = tmp_path / f"a.{ext}"
    Image.fromarray(arr).save(path, quality=100) if ext == "jpg" else Image.fromarray(arr).save(
        path)
    out = read_image(path)
    assert out.shape == (10, 14, 3) and out.dtype == np.uint8
    if ext != "jpg":
        np.testing.assert_array_equal(out, arr)
    assert image_size(path) == (10, 14)


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path):
    arr = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (8, 1))
    Image.fromarray(arr, "L").save(tmp_path / "g.jpg")
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (8, 20, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert abs(int(out[0, 10, 0]) - 100) <= 3


def test_palette_and_rgba_images(tmp_path):
    pal = Image.new("P", (4, 3))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out[1, 1].tolist() == [255, 0, 0] and out[0, 0].tolist() == [0, 0, 0]
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 1] = 77
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [0, 77, 0]


def test_sixteen_bit_grayscale_keeps_precision(tmp_path):
    arr = np.array([[0, 1, 32768, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.float32 and out.shape == (1, 4, 3)
    np.testing.assert_allclose(out[0, :, 0], arr[0] / 65535.0, rtol=1e-6)
    assert out[0, 1, 0] > 0  # 1/65535 survives (would be 0 at 8 bits)


def test_masks_are_binarised_from_any_mode(tmp_path):
    gray = np.array([[0, 1, 128, 255]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 1, 1, 1]])
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1, 2] = 9
    Image.fromarray(rgb).save(tmp_path / "c.png")
    mask = read_mask(tmp_path / "c.png")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 1, 0]])
    Image.fromarray(gray > 100).save(tmp_path / "b.png")  # 1-bit
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), [[0, 0, 1, 1]])


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image_names_the_file(tmp_path, ext):
    path = tmp_path / f"broken.{ext}"
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"broken\.{ext}: cannot read image.*truncated"):
        read_image(path)


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(DataError, match=r"x\.png: cannot read image"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DataError, match=r"nope\.png: mask file not found"):
        read_mask(tmp_path / "nope.png")
