"""Synthetic anomalies for self-supervised methods, as jittable functions of a PRNG key.

Every function takes one image ``[H, W, C]`` float in ``[0, 1]`` (or just a shape) and a key,
has static output shapes, and can be ``jax.jit``-ed and ``jax.vmap``-ed over a batch of
keys and images. Random sizes and positions are realised with masks and gathers rather
than dynamic slices.

* :func:`perlin_noise`, :func:`perlin_mask`, :func:`augment_source`, :func:`draem_augment`:
  DRAEM (Zavrtanik et al., ICCV 2021): thresholded Perlin noise, rotated as an image,
  selects where an anomaly-source texture, changed by three of DRAEM's ten augmenters, is
  blended in with opacity ``1 - beta``, ``beta ~ U(0, 0.8)``; half the samples stay normal.
  The augmenters re-implement imgaug's in JAX (hue/saturation and sharpness approximately).
* :func:`cutpaste`, :func:`cutpaste_scar`: CutPaste (Li et al., CVPR 2021): a rectangle of
  2-15 % of the image area, aspect ratio in ``[0.3, 3.3]``, or a thin rotated "scar"
  (width 2-16, height 10-25 px, rotation +-45 degrees, at 256 px), colour-jittered and pasted
  elsewhere.
* :func:`draem_sample`: DRAEM's whole training pair (the 30 % image rotation included).
* :func:`random_erasing`: Random Erasing (Zhong et al., AAAI 2020) with uniform noise.
* :func:`confetti_noise`: FCDD's confetti noise (Liznerski et al., ICLR 2021).
* :func:`riad_masks`, :func:`random_riad_masks`: RIAD (Zavrtanik et al., PR 2021):
  the image split into ``k x k`` cells partitioned at random into ``n`` disjoint masks,
  at scales ``k in {2, 4, 8, 16}``.

:func:`load_textures` and :func:`synthetic_textures` (host side, NumPy) give the anomaly-source
images DRAEM blends in; :class:`TextureSource` holds them on the host and draws each training
step's sources.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _fade(t: Array) -> Array:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(key: Array, shape: tuple[int, int], res: tuple[Array | float, Array | float]
                 ) -> Array:
    """2-D Perlin gradient noise ``[H, W]`` with ``res`` lattice cells along (y, x).

    ``res`` may be traced values. Scaled by ``sqrt(2)`` like DRAEM's generator, so values lie
    in about ``[-1, 1]``.
    """
    h, w = shape
    k_perm, k_grad = jax.random.split(key)
    perm = jax.random.permutation(k_perm, 256)
    grad_angle = jax.random.uniform(k_grad, (256,), maxval=2 * jnp.pi)
    ly = jnp.arange(h, dtype=jnp.float32)[:, None] / h * res[0]
    lx = jnp.arange(w, dtype=jnp.float32)[None, :] / w * res[1]
    iy, ix = jnp.floor(ly).astype(jnp.int32), jnp.floor(lx).astype(jnp.int32)
    fy, fx = ly - iy, lx - ix

    def corner(dy: int, dx: int) -> Array:
        cell = perm[(perm[(ix + dx) % 256] + iy + dy) % 256]
        g = grad_angle[cell]
        return jnp.cos(g) * (fy - dy) + jnp.sin(g) * (fx - dx)

    uy, ux = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return math.sqrt(2) * (top * (1 - uy) + bottom * uy)


def perlin_mask(key: Array, shape: tuple[int, int], min_scale: int = 0, max_scale: int = 6,
                threshold: float = 0.5) -> Array:
    """DRAEM's anomaly mask ``[H, W]`` float32 {0, 1}: Perlin noise with ``2**k`` cells per
    axis (``k`` uniform in ``[min_scale, max_scale)`` per axis), rotated by U(-90, 90) degrees
    as an image (:func:`rotate_image`: bilinear, zero outside, so the rotated-out corners
    hold no anomaly, as in DRAEM's ``iaa.Affine`` rotation of the noise), thresholded at
    ``threshold``."""
    k_noise, k_y, k_x, k_rot = jax.random.split(key, 4)
    res_y = 2.0 ** jax.random.randint(k_y, (), min_scale, max_scale)
    res_x = 2.0 ** jax.random.randint(k_x, (), min_scale, max_scale)
    angle = jax.random.uniform(k_rot, (), minval=-jnp.pi / 2, maxval=jnp.pi / 2)
    noise = rotate_image(perlin_noise(k_noise, shape, (res_y, res_x))[..., None], angle)[..., 0]
    return (noise > threshold).astype(jnp.float32)


def _grid(shape: tuple[int, int]) -> tuple[Array, Array]:
    """Row and column indices ``[H, 1]``, ``[1, W]`` as float32."""
    return (jnp.arange(shape[0], dtype=jnp.float32)[:, None],
            jnp.arange(shape[1], dtype=jnp.float32)[None, :])


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                np.float32)
_YIQ_INV = np.linalg.inv(_YIQ).astype(np.float32)


def _rotate_hue(x: Array, turns: Array, saturation: Array | float = 1.0) -> Array:
    """Rotate the hue of RGB ``[..., 3]`` by ``turns`` of the colour circle (in YIQ space) and
    scale its chroma by ``saturation``, keeping luminance."""
    yiq = x @ _YIQ.T
    c, s = jnp.cos(2 * jnp.pi * turns), jnp.sin(2 * jnp.pi * turns)
    i = (c * yiq[..., 1] - s * yiq[..., 2]) * saturation
    q = (s * yiq[..., 1] + c * yiq[..., 2]) * saturation
    return jnp.stack([yiq[..., 0], i, q], axis=-1) @ _YIQ_INV.T


def _uniform(key: Array, low: float, high: float) -> Array:
    return jax.random.uniform(key, (), minval=low, maxval=high)


def _sharpness(key: Array, x: Array) -> Array:
    """PIL ``ImageEnhance.Sharpness`` with a factor in ``[0, 2]`` (0 = smoothed)."""
    kernel = jnp.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], jnp.float32) / 13
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    smooth = sum(kernel[i, j] * padded[i:i + x.shape[0], j:j + x.shape[1]]
                 for i in range(3) for j in range(3))
    return smooth + _uniform(key, 0.0, 2.0) * (x - smooth)


def _hue_saturation(key: Array, x: Array) -> Array:
    """Hue shifted by up to +-50/255 of the circle and saturation scaled by up to +-20 %."""
    k_hue, k_sat = jax.random.split(key)
    return _rotate_hue(x, _uniform(k_hue, -50 / 255, 50 / 255), 1 + _uniform(k_sat, -0.2, 0.2))


def _solarize(key: Array, x: Array) -> Array:
    """With probability 1/2, invert values above a threshold in ``[32, 128] / 255``."""
    k_apply, k_thr = jax.random.split(key)
    inverted = jnp.where(x >= _uniform(k_thr, 32 / 255, 128 / 255), 1.0 - x, x)
    return jnp.where(jax.random.bernoulli(k_apply), inverted, x)


def _posterize(key: Array, x: Array) -> Array:
    """Keep 1 to 8 of the 8 bits of each value."""
    step = 2.0 ** (8 - jax.random.randint(key, (), 1, 9))
    return jnp.floor(jnp.round(x * 255) / step) * step / 255


def _autocontrast(key: Array, x: Array) -> Array:
    """Stretch each channel to ``[0, 1]``."""
    del key
    low, high = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    return (x - low) / jnp.maximum(high - low, 1e-6)


def _equalize(key: Array, x: Array) -> Array:
    """Histogram-equalise each channel over 256 levels."""
    del key
    levels = jnp.round(x * 255).astype(jnp.int32)

    def channel(v: Array) -> Array:
        cdf = jnp.cumsum(jnp.bincount(v.ravel(), length=256))
        first = cdf[jnp.argmax(cdf > 0)]
        return (cdf[v] - first) / jnp.maximum(cdf[-1] - first, 1)

    return jnp.stack([channel(levels[..., c]) for c in range(x.shape[-1])], axis=-1)


def rotate_image(x: Array, theta: Array | float) -> Array:
    """``x [H, W, C]`` rotated by ``theta`` radians about its centre: bilinear interpolation,
    zero outside (imgaug's ``Affine(rotate=...)`` defaults ``order=1``, ``mode="constant"``,
    ``cval=0``, as DRAEM uses it; imgaug's OpenCV backend quantises the sub-pixel offsets to
    1/32 px, here they are exact). Neighbours outside the image count as 0, so the border
    blends into black as in ``cv2.warpAffine``."""
    h, w = x.shape[:2]
    yy, xx = _grid((h, w))
    dy, dx = yy - (h - 1) / 2, xx - (w - 1) / 2
    sy = jnp.cos(theta) * dy - jnp.sin(theta) * dx + (h - 1) / 2
    sx = jnp.sin(theta) * dy + jnp.cos(theta) * dx + (w - 1) / 2
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]

    def tap(iy: Array, ix: Array) -> Array:
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        value = x[jnp.clip(iy, 0, h - 1).astype(jnp.int32),
                  jnp.clip(ix, 0, w - 1).astype(jnp.int32)]
        return jnp.where(inside[..., None], value, 0.0)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy).astype(x.dtype)


def _rotate(key: Array, x: Array) -> Array:
    """Rotate by up to +-45 degrees about the centre (bilinear, black outside)."""
    return rotate_image(x, jnp.deg2rad(_uniform(key, -45.0, 45.0)))


def _gamma(key: Array, x: Array) -> Array:
    """Gamma contrast with one exponent in ``[0.5, 2]`` per channel (imgaug
    ``GammaContrast((0.5, 2.0), per_channel=True)``, as DRAEM uses it)."""
    gamma = jax.random.uniform(key, (x.shape[-1],), minval=0.5, maxval=2.0)
    return x ** gamma


def _brightness(key: Array, x: Array) -> Array:
    k_mul, k_add = jax.random.split(key)
    return x * _uniform(k_mul, 0.8, 1.2) + _uniform(k_add, -30 / 255, 30 / 255)


def _invert(key: Array, x: Array) -> Array:
    del key
    return 1.0 - x


#: DRAEM's ten anomaly-source augmenters (imgaug in the original), re-implemented in JAX.
_SOURCE_AUGMENTERS = (_gamma, _brightness, _sharpness, _hue_saturation, _solarize, _posterize,
                      _invert, _autocontrast, _equalize, _rotate)


def augment_source(key: Array, source: Array) -> Array:
    """Apply three distinct augmenters drawn from DRAEM's list to an anomaly source
    ``[H, W, 3]`` in ``[0, 1]``: gamma, brightness, sharpness, hue/saturation, solarize,
    posterize, invert, autocontrast, equalize, rotation."""
    k_pick, k_ops = jax.random.split(key)
    picks = jax.random.choice(k_pick, len(_SOURCE_AUGMENTERS), (3,), replace=False)
    keys = jax.random.split(k_ops, 3)

    def step(i: Array, x: Array) -> Array:  # one compiled switch, applied three times
        return jnp.clip(jax.lax.switch(picks[i], _SOURCE_AUGMENTERS, keys[i], x), 0.0, 1.0)

    return jax.lax.fori_loop(0, 3, step, source)


def draem_augment(key: Array, image: Array, source: Array, p_anomaly: float = 0.5,
                  beta_max: float = 0.8) -> tuple[Array, Array, Array]:
    """DRAEM training sample: ``(augmented [H, W, C], mask [H, W], has_anomaly [])``.

    ``source`` ``[H, W, C]`` is the anomaly-source texture (DRAEM uses DTD images); it is
    photometrically augmented, then blended into ``image`` inside a Perlin mask as
    ``image * (1 - m) + (1 - beta) * source * m + beta * image * m``. With probability
    ``1 - p_anomaly`` the image is returned unchanged with an empty mask.
    """
    if source.shape != image.shape:
        raise ValueError(f"anomaly source {source.shape} must have the image's shape "
                         f"{image.shape}; resize it first")
    k_src, k_mask, k_beta, k_keep = jax.random.split(key, 4)
    mask = perlin_mask(k_mask, image.shape[:2])
    mask = mask * jax.random.bernoulli(k_keep, p_anomaly)
    beta = jax.random.uniform(k_beta, (), maxval=beta_max)
    src = augment_source(k_src, source.astype(jnp.float32))
    m = mask[..., None]
    augmented = image * (1 - m) + (1 - beta) * src * m + beta * image * m
    has_anomaly = (mask.sum() > 0).astype(jnp.float32)
    return augmented.astype(image.dtype), mask, has_anomaly


def draem_sample(key: Array, image: Array, source: Array, p_anomaly: float = 0.5,
                 beta_max: float = 0.8, p_rotate: float = 0.3,
                 max_rotation: float = 90.0) -> tuple[Array, Array, Array, Array]:
    """One DRAEM training pair as its authors' data loader makes it:
    ``(target [H, W, C], augmented [H, W, C], mask [H, W], has_anomaly [])``.

    With probability ``p_rotate`` the normal image is first rotated by
    ``U(-max_rotation, max_rotation)`` degrees (the authors rotate 30 % of the images by up
    to 90 degrees); the (possibly rotated) image is the reconstruction target and
    :func:`draem_augment` makes the augmented input from it.
    """
    k_rot, k_angle, k_aug = jax.random.split(key, 3)
    angle = jnp.deg2rad(_uniform(k_angle, -max_rotation, max_rotation))
    rotated = rotate_image(image, angle).astype(image.dtype)
    target = jnp.where(jax.random.bernoulli(k_rot, p_rotate), rotated, image)
    augmented, mask, has_anomaly = draem_augment(k_aug, target, source, p_anomaly, beta_max)
    return target, augmented, mask, has_anomaly


def color_jitter(key: Array, image: Array, strength: float = 0.1, hue: float = 0.1) -> Array:
    """torchvision-style ``ColorJitter``: brightness, contrast and saturation factors in
    ``[1 - strength, 1 + strength]`` and a hue shift of up to ``hue`` turns, on RGB images."""
    kb, kc, ks, kh = jax.random.split(key, 4)
    x = image * _uniform(kb, 1 - strength, 1 + strength)
    mean = (x @ jnp.asarray(_YIQ[0])).mean()
    x = jnp.clip((x - mean) * _uniform(kc, 1 - strength, 1 + strength) + mean, 0.0, 1.0)
    x = _rotate_hue(x, _uniform(kh, -hue, hue), _uniform(ks, 1 - strength, 1 + strength))
    return jnp.clip(x, 0.0, 1.0)


def _log_uniform(key: Array, low: float, high: float) -> Array:
    return jnp.exp(jax.random.uniform(key, (), minval=math.log(low), maxval=math.log(high)))


def _rect_size(key: Array, shape: tuple[int, int], area: tuple[float, float],
               aspect: tuple[float, float]) -> tuple[Array, Array]:
    """Height and width (floats, within the image) of a random rectangle."""
    k_area, k_aspect = jax.random.split(key)
    a = jax.random.uniform(k_area, (), minval=area[0], maxval=area[1]) * shape[0] * shape[1]
    r = _log_uniform(k_aspect, *aspect)
    h = jnp.clip(jnp.round(jnp.sqrt(a * r)), 1, shape[0])
    w = jnp.clip(jnp.round(jnp.sqrt(a / r)), 1, shape[1])
    return h, w


def cutpaste(key: Array, image: Array, area: tuple[float, float] = (0.02, 0.15),
             aspect: tuple[float, float] = (0.3, 1 / 0.3), jitter: float = 0.1
             ) -> tuple[Array, Array]:
    """CutPaste: ``(augmented [H, W, C], mask [H, W])`` with a colour-jittered rectangle of
    ``area`` (fraction of the image) and ``aspect`` (h / w, log-uniform) cut from one place
    and pasted at another."""
    shape = image.shape[:2]
    k_size, k_src, k_dst, k_jit = jax.random.split(key, 4)
    h, w = _rect_size(k_size, shape, area, aspect)
    limits = jnp.array([shape[0], shape[1]], jnp.float32) - jnp.stack([h, w])
    sy, sx = jnp.floor(jax.random.uniform(k_src, (2,)) * (limits + 1))
    ty, tx = jnp.floor(jax.random.uniform(k_dst, (2,)) * (limits + 1))
    yy, xx = _grid(shape)
    inside = (yy >= ty) & (yy < ty + h) & (xx >= tx) & (xx < tx + w)
    src_y = jnp.clip(yy - ty + sy, 0, shape[0] - 1).astype(jnp.int32)
    src_x = jnp.clip(xx - tx + sx, 0, shape[1] - 1).astype(jnp.int32)
    patch = color_jitter(k_jit, image, jitter)[src_y, src_x]
    return jnp.where(inside[..., None], patch, image), inside.astype(jnp.float32)


def cutpaste_scar(key: Array, image: Array, width: tuple[float, float] = (2, 16),
                  height: tuple[float, float] = (10, 25),
                  rotation: tuple[float, float] = (-45, 45), jitter: float = 0.1,
                  reference_size: int = 256) -> tuple[Array, Array]:
    """CutPaste-scar: a thin rectangle (``width`` x ``height`` pixels at ``reference_size``,
    scaled to this image) cut, colour-jittered, rotated by ``rotation`` degrees and pasted.
    Returns ``(augmented [H, W, C], mask [H, W])``."""
    shape = image.shape[:2]
    scale = min(shape) / reference_size
    k_w, k_h, k_rot, k_src, k_dst, k_jit = jax.random.split(key, 6)
    # At least 1.5 px wide and 3 px long, so that a scar scaled down to a small image (or
    # patch) still covers pixels.
    w = jnp.maximum(jax.random.uniform(k_w, (), minval=width[0], maxval=width[1]) * scale, 1.5)
    h = jnp.maximum(jax.random.uniform(k_h, (), minval=height[0], maxval=height[1]) * scale,
                    3.0)
    theta = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=rotation[0], maxval=rotation[1]))
    half = jnp.stack([h, w]) / 2
    size = jnp.array(shape, jnp.float32)
    src_c = half + jax.random.uniform(k_src, (2,)) * jnp.maximum(size - 2 * half, 0)
    radius = jnp.sqrt((half ** 2).sum())
    dst_c = radius + jax.random.uniform(k_dst, (2,)) * jnp.maximum(size - 2 * radius, 0)
    yy, xx = _grid(shape)
    dy, dx = yy + 0.5 - dst_c[0], xx + 0.5 - dst_c[1]
    v = jnp.cos(theta) * dy + jnp.sin(theta) * dx
    u = -jnp.sin(theta) * dy + jnp.cos(theta) * dx
    inside = (jnp.abs(v) < half[0]) & (jnp.abs(u) < half[1])
    src_y = jnp.clip(jnp.floor(src_c[0] + v), 0, shape[0] - 1).astype(jnp.int32)
    src_x = jnp.clip(jnp.floor(src_c[1] + u), 0, shape[1] - 1).astype(jnp.int32)
    patch = color_jitter(k_jit, image, jitter)[src_y, src_x]
    return jnp.where(inside[..., None], patch, image), inside.astype(jnp.float32)


def random_erasing(key: Array, image: Array, area: tuple[float, float] = (0.02, 0.33),
                   aspect: tuple[float, float] = (0.3, 3.3)) -> tuple[Array, Array]:
    """Random Erasing: a rectangle (``area`` fraction, ``aspect`` h / w) replaced by uniform
    noise. Returns ``(erased [H, W, C], mask [H, W])``."""
    shape = image.shape[:2]
    k_size, k_pos, k_val = jax.random.split(key, 3)
    h, w = _rect_size(k_size, shape, area, aspect)
    limits = jnp.array(shape, jnp.float32) - jnp.stack([h, w])
    ty, tx = jnp.floor(jax.random.uniform(k_pos, (2,)) * (limits + 1))
    yy, xx = _grid(shape)
    inside = (yy >= ty) & (yy < ty + h) & (xx >= tx) & (xx < tx + w)
    noise = jax.random.uniform(k_val, image.shape, image.dtype)
    return jnp.where(inside[..., None], noise, image), inside.astype(jnp.float32)


def _blob_masks(key: Array, shape: tuple[int, int], count: int, side: tuple[float, float],
                rotation: float) -> Array:
    """``count`` rotated squares ``[count, H, W]`` float32 {0, 1}, sides ``U(side)`` pixels,
    centres uniform over the image, rotations ``U(-rotation, rotation)`` degrees."""
    k_side, k_pos, k_rot = jax.random.split(key, 3)
    sides = jax.random.uniform(k_side, (count, 1, 1), minval=side[0], maxval=side[1])
    centres = jax.random.uniform(k_pos, (count, 2)) * jnp.array(shape, jnp.float32)
    theta = jnp.deg2rad(jax.random.uniform(k_rot, (count, 1, 1), minval=-rotation,
                                           maxval=rotation))
    yy, xx = _grid(shape)
    dy = yy[None] + 0.5 - centres[:, 0, None, None]
    dx = xx[None] + 0.5 - centres[:, 1, None, None]
    v = jnp.cos(theta) * dy + jnp.sin(theta) * dx
    u = -jnp.sin(theta) * dy + jnp.cos(theta) * dx
    return ((jnp.abs(v) < sides / 2) & (jnp.abs(u) < sides / 2)).astype(jnp.float32)


def malformed_normal(image: Array, noise: Array, invert_threshold: float = 0.025 / 255
                     ) -> Array:
    """FCDD's "malformed normal" image ``clip(image + noise, 0, 1)`` ``[H, W, C]``, with the
    code's invert rule (``online_supervisor.py`` ``__malformed_normal``): when the mean change
    ``|mean(clip(image + noise) - image)|`` is below ``invert_threshold`` (the code's 0.025 grey
    levels of 255) and subtracting the noise would change more, the noise is subtracted."""
    def change(sign: float) -> Array:
        return jnp.abs(jnp.mean(jnp.clip(image + sign * noise, 0.0, 1.0) - image))

    forward, inverted = change(1.0), change(-1.0)
    sign = jnp.where((forward < invert_threshold) & (inverted > forward), -1.0, 1.0)
    return jnp.clip(image + sign * noise, 0.0, 1.0).astype(image.dtype)


def confetti_noise(key: Array, image: Array, max_blobs: int = 4, p_extra: float = 0.3,
                   side: tuple[float, float] = (8, 54), rotation: float = 45.0,
                   blur_sigma: float = 5.0, reference_size: int = 224
                   ) -> tuple[Array, Array]:
    """FCDD's confetti noise (Liznerski et al., ICLR 2021), as a "malformed normal" image:
    ``(malformed_normal(image, smoothed noise) [H, W, C], mask [H, W])``.

    As in the code (``noise_modes.py``, mode ``confetti``) every blob darkens: coloured blobs
    take a random colour per channel from ``{-256, ..., -1} / 255`` (``colorrange=(-256,
    0)``), the others ``-1`` (``fillval=-255``); :func:`malformed_normal` inverts the noise of
    an image it would barely change (a dark one). Blobs are rotated squares of side ``side``
    pixels (at ``reference_size``, scaled to this image); the noise image is smoothed with a
    Gaussian of ``blur_sigma`` (scaled). The mask is the union of the blobs' footprints. FCDD
    draws blob centres as Bernoulli pixels (``p = 1.8e-5`` coloured and ``1.2e-5`` dark at
    224 px: about one blob per image, at least one); here the first coloured blob is always
    there and each of the other ``max_blobs - 1`` (alternately coloured and dark) appears
    with probability ``p_extra``, so that shapes stay static, and later blobs paint over
    earlier ones where the code adds its two noise images.
    """
    from anomjax.scoring import gaussian_blur

    shape = image.shape[:2]
    scale = min(shape) / reference_size
    k_blobs, k_keep, k_colour = jax.random.split(key, 3)
    blobs = _blob_masks(k_blobs, shape, max_blobs, (side[0] * scale, side[1] * scale), rotation)
    keep = jnp.concatenate([jnp.ones((1,)), jax.random.bernoulli(
        k_keep, p_extra, (max_blobs - 1,)).astype(jnp.float32)])
    blobs = blobs * keep[:, None, None]
    coloured = jnp.arange(max_blobs) % 2 == 0
    colours = jax.random.randint(k_colour, (max_blobs, image.shape[-1]), -256, 0) / 255.0
    colours = jnp.where(coloured[:, None], colours, -1.0)
    noise = jnp.zeros(image.shape, jnp.float32)
    for i in range(max_blobs):
        noise = jnp.where(blobs[i][..., None] > 0, colours[i], noise)
    noise = jnp.moveaxis(gaussian_blur(jnp.moveaxis(noise, -1, 0), blur_sigma * scale), 0, -1)
    return malformed_normal(image, noise), jnp.max(blobs, axis=0)


def riad_masks(key: Array, shape: tuple[int, int], cell_size: int, n_masks: int = 3) -> Array:
    """RIAD masks ``[n_masks, H, W]`` float32: ``cell_size`` squares assigned at random to
    ``n_masks`` disjoint sets (balanced); the masks sum to one everywhere."""
    gh, gw = -(-shape[0] // cell_size), -(-shape[1] // cell_size)
    assignment = jax.random.permutation(key, gh * gw) % n_masks
    cells = assignment.reshape(gh, gw)
    pixels = jnp.repeat(jnp.repeat(cells, cell_size, 0), cell_size, 1)[: shape[0], : shape[1]]
    return (pixels[None] == jnp.arange(n_masks)[:, None, None]).astype(jnp.float32)


def random_riad_masks(key: Array, shape: tuple[int, int],
                      cell_sizes: Sequence[int] = (2, 4, 8, 16), n_masks: int = 3) -> Array:
    """RIAD masks ``[n_masks, H, W]`` at a scale drawn uniformly from ``cell_sizes``."""
    k_scale, k_masks = jax.random.split(key)
    all_scales = jnp.stack([riad_masks(k_masks, shape, k, n_masks) for k in cell_sizes])
    return all_scales[jax.random.randint(k_scale, (), 0, len(cell_sizes))]


def load_textures(folder: str | os.PathLike, size: tuple[int, int],
                  limit: int | None = None) -> np.ndarray:
    """Every image under ``folder`` (recursively, sorted; at most ``limit``), resized
    bilinearly to ``size`` ``(H, W)``: ``[T, H, W, 3]`` uint8, e.g. DRAEM's DTD anomaly source.
    Raises a ``DataError`` naming the folder when it is missing or holds no image."""
    from PIL import Image

    from anomjax.data.errors import DataError
    from anomjax.data.image_io import is_image_file, read_image

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"texture folder {root} does not exist or is not a folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))[:limit]
    if not paths:
        raise DataError(f"texture folder {root} holds no image files")
    out = np.empty((len(paths), *size, 3), np.uint8)
    for i, path in enumerate(paths):
        pixels = read_image(path)
        if pixels.dtype != np.uint8:
            pixels = np.round(pixels * 255).astype(np.uint8)
        resized = Image.fromarray(pixels).resize((size[1], size[0]), Image.BILINEAR)
        out[i] = np.asarray(resized)
    return out


def synthetic_textures(size: tuple[int, int], per_category: int = 4,
                       seed: int = 0) -> np.ndarray:
    """Defect-free images of the three texture categories of :mod:`anomjax.data.synthetic`
    (fabric, metal, wood; ``per_category`` each) resized to ``size``: ``[T, H, W, 3]`` uint8.
    The default anomaly source when no texture folder is given (no DTD offline)."""
    from PIL import Image

    from anomjax.data.synthetic import generate_image

    side = max(max(size), 32)
    out = []
    for category in ("fabric", "metal", "wood"):
        for i in range(per_category):
            image, _ = generate_image(category, "good", i, image_size=side, seed=seed,
                                      split="texture")
            pixels = Image.fromarray(np.round(image * 255).astype(np.uint8))
            out.append(np.asarray(pixels.resize((size[1], size[0]), Image.BILINEAR)))
    return np.stack(out)


@dataclasses.dataclass(frozen=True, eq=False)
class TextureSource:
    """Anomaly-source textures ``[T, H, W, 3]`` uint8 held on the host (never in a train
    state); a training step's host inputs (:meth:`anomjax.methods.protocol.TrainedMethod.
    host_inputs`)."""

    textures: np.ndarray

    def draw(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """``{"sources": [batch_size, H, W, 3]}`` uint8: textures picked uniformly with
        replacement by ``rng.integers(0, T, batch_size)``."""
        return {"sources": self.textures[rng.integers(0, len(self.textures), batch_size)]}
