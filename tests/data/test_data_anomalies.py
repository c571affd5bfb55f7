"""Synthetic-anomaly generators: jittable, vmappable, deterministic, masks that match."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.data import anomalies

H = W = 32
PATCH_FNS = (anomalies.cutpaste, anomalies.cutpaste_scar, anomalies.random_erasing)
# Compiled once per module: batched over keys, one image.
BATCHED = {fn: jax.jit(jax.vmap(fn, in_axes=(0, None))) for fn in PATCH_FNS}


@pytest.fixture(scope="module")
def image():
    return jax.random.uniform(jax.random.key(1), (H, W, 3))


@pytest.mark.slow
@pytest.mark.parametrize("fn", PATCH_FNS)
def test_patch_augmentations(fn, image):
    keys = jax.random.split(jax.random.key(0), 16)
    out, masks = BATCHED[fn](keys, image)
    chex.assert_shape(out, (16, H, W, 3))
    chex.assert_shape(masks, (16, H, W))
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert np.all(masks.sum((1, 2)) > 0)
    outside = np.broadcast_to(masks[..., None] == 0, out.shape)
    np.testing.assert_array_equal(np.asarray(out)[outside],
                                  np.broadcast_to(np.asarray(image), out.shape)[outside])
    assert np.abs(np.asarray(out) - np.asarray(image)).max() > 0.05
    again, _ = BATCHED[fn](keys, image)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))


@pytest.mark.slow
def test_cutpaste_runs_the_same_without_jit(image):
    keys = jax.random.split(jax.random.key(0), 16)
    out, masks = BATCHED[anomalies.cutpaste](keys, image)
    eager = anomalies.cutpaste(keys[3], image)
    chex.assert_trees_all_close(eager, (out[3], masks[3]), atol=1e-5)


def test_cutpaste_area_is_in_range(image):
    keys = jax.random.split(jax.random.key(4), 16)
    _, masks = BATCHED[anomalies.cutpaste](keys, image)
    area = np.asarray(masks.mean((1, 2)))
    assert area.min() >= 0.01 and area.max() <= 0.17


def test_perlin_noise_is_smooth_and_bounded():
    noise = jax.jit(anomalies.perlin_noise, static_argnums=1)(jax.random.key(0), (H, W),
                                                              (2.0, 4.0))
    assert float(jnp.abs(noise).max()) <= 1.0 + 1e-5 and float(noise.std()) > 0.1
    assert float(jnp.abs(jnp.diff(noise, axis=1)).max()) < 0.5


@pytest.mark.slow
def test_draem_augment(image):
    source = jnp.broadcast_to(jnp.linspace(0, 1, W)[None, :, None], (H, W, 3))
    draem = jax.jit(anomalies.draem_augment)
    outs = [draem(k, image, source) for k in jax.random.split(jax.random.key(2), 32)]
    aug, masks, has = (np.stack([np.asarray(o[i]) for o in outs]) for i in range(3))
    assert aug.shape == (32, H, W, 3) and masks.shape == (32, H, W) and has.shape == (32,)
    assert 6 <= int(has.sum()) <= 26  # about half carry an anomaly
    np.testing.assert_array_equal(has, masks.sum((1, 2)) > 0)
    outside = np.broadcast_to(masks[..., None] == 0, aug.shape)
    np.testing.assert_allclose(aug[outside], np.broadcast_to(np.asarray(image), aug.shape)[outside],
                               atol=1e-6)
    assert np.abs(aug - np.asarray(image)).max() > 0.05
    assert 0.0 <= aug.min() and aug.max() <= 1.0
    chex.assert_trees_all_close(draem(jax.random.key(9), image, source),
                                draem(jax.random.key(9), image, source))
    with pytest.raises(ValueError, match="anomaly source"):
        anomalies.draem_augment(jax.random.key(0), image, source[:16])


def test_riad_masks_partition_the_image():
    masks = jax.jit(anomalies.riad_masks, static_argnums=(1, 2, 3))(jax.random.key(0), (H, W),
                                                                    8, 3)
    chex.assert_shape(masks, (3, H, W))
    np.testing.assert_array_equal(np.asarray(masks.sum(0)), 1.0)
    blocks = np.asarray(masks[0]).reshape(4, 8, 4, 8)
    assert np.all(blocks.min((1, 3)) == blocks.max((1, 3)))  # constant on 8x8 cells
    assert 4 <= int(blocks[:, 0, :, 0].sum()) <= 7  # 16 cells in 3 balanced sets
    scales = jax.jit(anomalies.random_riad_masks, static_argnums=(1,))
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(scales(jax.random.key(i), (H, W)).sum(0)), 1.0)


@pytest.mark.slow
def test_draem_source_augmenters():
    x = jax.random.uniform(jax.random.key(5), (16, 16, 3))
    every = jax.jit(lambda k, img: jnp.stack([f(k, img) for f in anomalies._SOURCE_AUGMENTERS]))
    out = np.asarray(every(jax.random.key(6), x))
    assert out.shape == (10, 16, 16, 3) and np.all(np.isfinite(out))
    names = [f.__name__ for f in anomalies._SOURCE_AUGMENTERS]
    by = dict(zip(names, out, strict=True))
    np.testing.assert_allclose(by["_invert"], 1 - np.asarray(x), atol=1e-6)
    np.testing.assert_allclose(by["_autocontrast"].min((0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(by["_autocontrast"].max((0, 1)), 1.0, atol=1e-6)
    assert abs(float(by["_equalize"].mean()) - 0.5) < 0.05
    assert np.all(np.diff(np.sort(by["_posterize"].ravel())) >= 0)
    assert len(np.unique(by["_posterize"])) <= 256
    # Hue rotation keeps luminance.
    luma = np.array([0.299, 0.587, 0.114])
    turned = np.asarray(anomalies._rotate_hue(x, 0.3))
    np.testing.assert_allclose(turned @ luma, np.asarray(x) @ luma, atol=1e-5)


def test_rotate_image_by_quarter_turns_is_a_permutation(image):
    quarter = np.asarray(jax.jit(anomalies.rotate_image)(image, jnp.pi / 2))
    candidates = [np.rot90(np.asarray(image), k, axes=(0, 1)) for k in (1, 3)]
    assert any(np.allclose(quarter, c, atol=1e-5) for c in candidates)
    np.testing.assert_array_equal(anomalies.rotate_image(image, 0.0), image)


def test_rotate_image_is_bilinear_with_zero_outside_as_imgaug_affine(image):
    """Against scipy's order-1 rotation with a zero ("grid-constant") outside: imgaug's
    ``Affine(rotate=...)`` defaults (``order=1``, ``cval=0``), which DRAEM uses."""
    from scipy import ndimage

    x = np.asarray(image, np.float64)
    ours = np.asarray(anomalies.rotate_image(image, jnp.deg2rad(30.0)))
    # scipy's angle turns the other way; the angles drawn are symmetric about 0.
    want = ndimage.rotate(x, -30.0, axes=(0, 1), reshape=False, order=1, mode="grid-constant",
                          cval=0.0)
    np.testing.assert_allclose(ours, want, atol=1e-5)


def test_perlin_mask_corners_rotated_out_hold_no_anomaly():
    """The noise is rotated as an image with a zero fill (DRAEM's ``iaa.Affine`` on the
    noise), so a corner, outside the rotated square for any angle above ~1 degree, is never
    anomalous, while the image centre often is."""
    masks = jax.jit(jax.vmap(lambda k: anomalies.perlin_mask(k, (H, W))))(
        jax.random.split(jax.random.key(5), 64))
    masks = np.asarray(masks)
    assert masks[:, 0, 0].sum() == 0 and masks[:, -1, -1].sum() == 0
    assert masks[:, H // 2 - 4:H // 2 + 4, W // 2 - 4:W // 2 + 4].max((1, 2)).sum() >= 8


def test_draem_sample_rotates_the_target_and_augments_it(image):
    source = jnp.broadcast_to(jnp.linspace(0, 1, W)[None, :, None], (H, W, 3))
    key = jax.random.key(3)
    target, aug, mask, has = anomalies.draem_sample(key, image, source, p_rotate=0.0)
    np.testing.assert_array_equal(target, image)
    _, _, k_aug = jax.random.split(key, 3)
    want = anomalies.draem_augment(k_aug, image, source)
    chex.assert_trees_all_close((aug, mask, has), want)
    rotated, aug, _, _ = anomalies.draem_sample(key, image, source, p_rotate=1.0)
    assert not np.array_equal(np.asarray(rotated), np.asarray(image))
    # Outside the anomaly the input is the (rotated) target.
    np.testing.assert_allclose(np.asarray(aug)[np.asarray(mask) == 0],
                               np.asarray(rotated)[np.asarray(mask) == 0], atol=1e-6)


def test_confetti_noise_changes_the_blobs_and_keeps_far_pixels(image):
    out, mask = jax.jit(jax.vmap(anomalies.confetti_noise, in_axes=(0, None)))(
        jax.random.split(jax.random.key(7), 8), image)
    out, mask = np.asarray(out), np.asarray(mask)
    assert out.shape == (8, H, W, 3) and mask.shape == (8, H, W)
    assert np.all(mask.reshape(8, -1).max(1) == 1)  # at least one blob each
    assert 0.0 <= out.min() and out.max() <= 1.0
    diff = np.abs(out - np.asarray(image)).max(-1)
    assert np.all([diff[i][mask[i] > 0].mean() > 0.05 for i in range(8)])
    # The noise is smoothed (sigma 5 at 224 px) but does not spread beyond a few pixels.
    from scipy import ndimage
    far = ~np.stack([ndimage.binary_dilation(m > 0, iterations=4) for m in mask])
    assert diff[far].max() < 1e-3


def test_textures_from_a_folder_and_procedural(tmp_path):
    from PIL import Image

    from anomjax.data.errors import DataError

    (tmp_path / "banded").mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "banded" / "a.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    textures = anomalies.load_textures(tmp_path, (16, 12))
    assert textures.shape == (2, 16, 12, 3) and textures.dtype == np.uint8
    assert set(np.unique(textures)) == {0, 200}
    with pytest.raises(DataError, match="holds no image"):
        anomalies.load_textures(tmp_path / "banded" / "..", (8, 8), limit=0)
    with pytest.raises(DataError, match="does not exist"):
        anomalies.load_textures(tmp_path / "missing", (8, 8))
    procedural = anomalies.synthetic_textures((16, 24), per_category=1)
    assert procedural.shape == (3, 16, 24, 3) and procedural.std() > 5


def test_confetti_noise_darkens_and_inverts_on_dark_images():
    """FCDD's confetti darkens (``colorrange=(-256, 0)``, ``fillval=-255``); on a black image,
    where darkening changes nothing, the invert rule brightens instead."""
    keys = jax.random.split(jax.random.key(5), 8)
    make = jax.jit(jax.vmap(anomalies.confetti_noise, in_axes=(0, None)))
    grey = jnp.full((H, W, 3), 0.5, jnp.float32)
    out, mask = make(keys, grey)
    assert np.all(np.asarray(out) <= 0.5 + 1e-6)
    assert np.all([(0.5 - np.asarray(out[i]))[np.asarray(mask[i]) > 0].mean() > 0.05
                   for i in range(8)])
    black = jnp.zeros((H, W, 3), jnp.float32)
    out, mask = make(keys, black)
    assert np.all([np.asarray(out[i])[np.asarray(mask[i]) > 0].mean() > 0.05 for i in range(8)])


def test_malformed_normal_inverts_only_small_changes():
    image = jnp.full((4, 4, 3), 0.5, jnp.float32)
    noise = jnp.zeros((4, 4, 3)).at[0, 0].set(-0.25)
    np.testing.assert_allclose(anomalies.malformed_normal(image, noise), image + noise)
    black = jnp.zeros((4, 4, 3), jnp.float32)
    np.testing.assert_allclose(anomalies.malformed_normal(black, noise), -noise)
    # A change just above the threshold (0.025 grey levels of 255 on average) is kept.
    dim = black.at[0, 0].set(0.01)
    np.testing.assert_allclose(anomalies.malformed_normal(dim, noise), jnp.clip(dim + noise, 0, 1))
