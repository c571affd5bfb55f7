"""Shared losses against independent references: scikit-image SSIM, a SciPy/NumPy MSGMS, hand
computations of the WGAN-GP penalty and of the residuals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from anomjax.nn.losses import (
    gradient_penalty,
    l1_loss,
    l2_loss,
    msgms_loss,
    msgms_map,
    squared_error_map,
    ssim_loss,
    ssim_map,
)


def _pair(seed: int = 0, shape=(2, 40, 36, 3)) -> tuple[np.ndarray, np.ndarray]:
    """An image with structure and a noisy, partly altered copy of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    base = 0.5 + 0.3 * np.sin(xx / 3.0)[None, :, :, None] * np.cos(yy / 5.0)[None, :, :, None]
    x = np.clip(base + 0.05 * rng.normal(size=shape), 0, 1)
    y = np.clip(x + 0.1 * rng.normal(size=shape), 0, 1)
    y[:, 10:20, 5:15] = 0.9
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_ssim_map_matches_scikit_image(data_range):
    x, y = _pair()
    x, y = x * data_range, y * data_range
    got = np.asarray(jax.jit(lambda a, b: ssim_map(a, b, data_range=data_range))(x, y))
    for i in range(len(x)):
        _, full = structural_similarity(x[i].astype(np.float64), y[i].astype(np.float64),
                                        channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=data_range,
                                        full=True)
        np.testing.assert_allclose(got[i], full.mean(axis=-1), atol=1e-4)
    assert float(ssim_loss(x, x, data_range=data_range)) == pytest.approx(0.0, abs=1e-5)
    assert float(ssim_loss(x, y, data_range=data_range)) == pytest.approx(
        1 - got.mean(), abs=1e-6)


def test_ssim_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"two \[B, H, W, C\] images of one shape"):
        ssim_map(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 9, 3)))


def _gms_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-channel Prewitt GMS ``[H, W, C]`` with scipy (zero padding), c = 0.0026."""
    kx = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0

    def magnitude(img):
        gx = ndimage.correlate(img, kx, mode="constant")
        gy = ndimage.correlate(img, kx.T, mode="constant")
        return np.sqrt(gx ** 2 + gy ** 2 + 1e-12)

    out = []
    for c in range(x.shape[-1]):
        g1, g2 = magnitude(x[..., c]), magnitude(y[..., c])
        out.append((2 * g1 * g2 + 0.0026) / (g1 ** 2 + g2 ** 2 + 0.0026))
    return np.stack(out, axis=-1)


def _halve(img: np.ndarray) -> np.ndarray:
    h, w, c = img.shape
    return img[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def _bilinear_up(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of ``[h', w']`` by separable np.interp (edges clamped)."""
    src_h, src_w = img.shape
    ys = (np.arange(h) + 0.5) * src_h / h - 0.5
    xs = (np.arange(w) + 0.5) * src_w / w - 0.5
    rows = np.stack([np.interp(ys, np.arange(src_h), img[:, j]) for j in range(src_w)], 1)
    return np.stack([np.interp(xs, np.arange(src_w), rows[i]) for i in range(h)], 0)


def test_msgms_loss_and_map_match_a_scipy_reference():
    x, y = _pair(1, shape=(2, 32, 48, 3))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    losses, maps = [], []
    for i in range(len(x)):
        a, b = x64[i], y64[i]
        per_scale, up = [], np.zeros(x.shape[1:3])
        for s in range(4):
            if s:
                a, b = _halve(a), _halve(b)
            g = _gms_reference(a, b)
            per_scale.append(1 - g)
            up += _bilinear_up(g.mean(-1), *x.shape[1:3])
        losses.append(per_scale)
        maps.append(1 - up / 4)
    want_loss = np.mean([np.concatenate([p[s].ravel() for p in losses]).mean() for s in range(4)])
    np.testing.assert_allclose(float(jax.jit(msgms_loss)(x, y)), want_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(msgms_map)(x, y)), np.stack(maps), atol=1e-5)
    np.testing.assert_allclose(np.asarray(msgms_map(x, x)), 0.0, atol=1e-6)
    assert float(msgms_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        msgms_loss(x[:, :4, :4], y[:, :4, :4])


def test_residual_losses_are_numpy_means():
    x, y = _pair(2)
    np.testing.assert_allclose(float(l1_loss(x, y)), np.abs(x - y).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(l2_loss(x, y)), ((x - y) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(squared_error_map(x, y)), ((x - y) ** 2).mean(-1),
                               rtol=1e-5)


def test_gradient_penalty_by_hand():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    fake = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    eps = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    # A linear critic has gradient w everywhere: penalty (|w| - 1)^2.
    w = rng.normal(size=(5, 6, 3)).astype(np.float32)
    linear = jax.jit(lambda r, f, e: gradient_penalty(
        lambda z: jnp.sum(z * w, axis=(1, 2, 3)), r, f, e))
    np.testing.assert_allclose(float(linear(real, fake, eps)),
                               (np.linalg.norm(w) - 1) ** 2, rtol=1e-5)
    # 0.5 |z|^2 has gradient z = eps real + (1 - eps) fake.
    mixed = eps[:, None, None, None] * real + (1 - eps[:, None, None, None]) * fake
    want = np.mean((np.linalg.norm(mixed.reshape(4, -1), axis=1) - 1) ** 2)
    quad = gradient_penalty(lambda z: 0.5 * jnp.sum(z * z, axis=(1, 2, 3)), real, fake, eps)
    np.testing.assert_allclose(float(quad), want, rtol=1e-5)
