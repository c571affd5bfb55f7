"""SSPCAB against a NumPy masked convolution, and receptive-field upsampling against a loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.nn.receptive_upsample import gaussian_window, receptive_upsample
from anomjax.nn.sspcab import SSPCAB, sspcab_loss


def _numpy_sspcab(x: np.ndarray, p: dict, k: int, d: int) -> np.ndarray:
    """The block as one masked ``(2k + 2d + 1)`` kernel whose four corner ``k x k`` squares
    are the sub-kernels, zero padding ``k + d``, then squeeze-and-excitation."""
    b, h, w, c = x.shape
    size, pad = 2 * k + 2 * d + 1, k + d
    kernel = np.zeros((size, size, c, c))
    bias = np.zeros(c)
    off = k + 2 * d + 1
    for i, (dy, dx) in enumerate(((0, 0), (off, 0), (0, off), (off, off))):
        kernel[dy:dy + k, dx:dx + k] = p[f"conv{i + 1}"]["kernel"]
        bias += p[f"conv{i + 1}"]["bias"]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = np.zeros((b, h, w, c))
    for i in range(h):
        for j in range(w):
            y[:, i, j] = np.einsum("byxc,yxcd->bd", xp[:, i:i + size, j:j + size], kernel)
    y = np.maximum(y + bias, 0)
    s = y.mean(axis=(1, 2))
    hid = np.maximum(s @ p["se_fc1"]["kernel"] + p["se_fc1"]["bias"], 0)
    gate = 1 / (1 + np.exp(-(hid @ p["se_fc2"]["kernel"] + p["se_fc2"]["bias"])))
    return y * gate[:, None, None]


def test_sspcab_is_a_masked_convolution_with_channel_attention():
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 8)).astype(np.float32)
    for k, d in ((1, 1), (2, 1), (1, 2)):
        block = SSPCAB(8, kernel_dim=k, dilation=d, reduction_ratio=4)
        params = block.init(jax.random.key(k + 3 * d), jnp.asarray(x))["params"]
        got = block.apply({"params": params}, jnp.asarray(x))
        want = _numpy_sspcab(x.astype(np.float64), jax.tree.map(np.asarray, params), k, d)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    # The hidden centre: before attention, a pixel's own value never reaches its output.
    block = SSPCAB(8)
    params = block.init(jax.random.key(0), jnp.asarray(x))["params"]
    pre = {**params, "se_fc2": {"kernel": jnp.zeros_like(params["se_fc2"]["kernel"]),
                                "bias": jnp.full_like(params["se_fc2"]["bias"], 30.0)}}
    poked = x.copy()
    poked[:, 3, 2] += 10.0
    a = block.apply({"params": pre}, jnp.asarray(x))
    b = block.apply({"params": pre}, jnp.asarray(poked))
    np.testing.assert_allclose(a[:, 3, 2], b[:, 3, 2], atol=1e-5)
    assert float(jnp.abs(a - b).max()) > 1e-2
    np.testing.assert_allclose(sspcab_loss(jnp.asarray(x), 2 * jnp.asarray(x)),
                               np.mean(x ** 2), rtol=1e-6)


def _loop_upsample(a: np.ndarray, size: tuple[int, int], stride: int, window: np.ndarray,
                   offset: int) -> np.ndarray:
    k = window.shape[0]
    base = k + abs(offset)
    out = np.zeros((a.shape[0], 2 * base + a.shape[1] * stride + size[0],
                    2 * base + a.shape[2] * stride + size[1]))
    for i in range(a.shape[1]):
        for j in range(a.shape[2]):
            y, x = base + i * stride + offset, base + j * stride + offset
            out[:, y:y + k, x:x + k] += a[:, i, j, None, None] * window
    return out[:, base:base + size[0], base:base + size[1]]


def test_receptive_upsample_spreads_each_score_over_its_window():
    a = np.random.default_rng(1).uniform(size=(2, 4, 5)).astype(np.float32)
    for stride, kernel, sigma, offset in ((4, 7, 2.0, -1), (8, 8, 3.0, 0), (4, 13, None, -5)):
        window = gaussian_window(kernel, sigma)
        got = receptive_upsample(jnp.asarray(a), (20, 24), stride=stride, kernel=kernel,
                                 sigma=sigma, offset=offset)
        want = _loop_upsample(a, (20, 24), stride, window, offset)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert gaussian_window(5, 1.0)[2, 2] == 1.0
    # Box windows, normalised: the mean of the scores of the patches covering each pixel.
    mean = receptive_upsample(jnp.asarray(a), (16, 20), stride=4, kernel=4, sigma=None,
                              normalize=True)
    np.testing.assert_allclose(mean, np.kron(a, np.ones((4, 4))), rtol=1e-6)
