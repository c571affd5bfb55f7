"""Image losses and similarity maps shared by the reconstruction and generative methods.

All functions are pure and jittable and take images ``[B, H, W, C]`` (float, any range given
by ``data_range``); maps are ``[B, H, W]`` (averaged over channels). Convolutions run at the
default precision (a score traces them at ``HIGHEST``, see :mod:`anomjax.precision`).

* :func:`l1_loss`, :func:`l2_loss`, :func:`squared_error_map`: residuals.
* :func:`ssim_map`, :func:`ssim_loss`: SSIM (Wang et al. 2004) with an 11-tap Gaussian window
  (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, population (co)variances and reflect padding,
  the same map as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, full=True)``; ``padding="zero"`` zero-pads the local moments
  instead, as the ``pytorch-ssim`` code that DRAEM and RIAD use does (``F.conv2d(...,
  padding=window // 2)``).
* :func:`gms_map`, :func:`msgms_map`, :func:`msgms_loss`: multi-scale gradient magnitude
  similarity as RIAD (Zavrtanik et al., Pattern Recognition 2021) defines it: Prewitt
  gradient magnitudes (3x3 kernels / 3, zero padding) of both images, ``GMS = (2 g1 g2 + c)
  / (g1^2 + g2^2 + c)`` with ``c = 0.0026``, on 4 scales (the image and three 2x2
  average-pooled halvings). The loss averages ``1 - GMS`` over each scale's own pixels and
  then over scales; the map upsamples each scale's ``GMS`` bilinearly to the input size and
  is ``1 - `` their mean. Colour images are handled per channel and averaged (RIAD's
  reimplementations differ: some average the channels first).
* :func:`gradient_penalty`: the WGAN-GP term (Gulrajani et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute difference over all elements: ``[B, ...] x 2 -> []``."""
    return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def l2_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared difference over all elements: ``[B, ...] x 2 -> []``."""
    return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))


def squared_error_map(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-pixel squared residual averaged over channels: ``[B, H, W, C] x 2 -> [B, H, W]``."""
    return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=-1)


def _per_channel(x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B * C, 1, H, W]`` float32 (one image per channel)."""
    b, h, w, c = x.shape
    return jnp.transpose(x.astype(jnp.float32), (0, 3, 1, 2)).reshape(b * c, 1, h, w)


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``[N, 1, H, W]`` correlated with a ``[kh, kw]`` kernel, VALID."""
    return jax.lax.conv_general_dilated(x, kernel[None, None], (1, 1), "VALID",
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _gaussian_taps(size: int, sigma: float) -> jax.Array:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    k = jnp.exp(-0.5 * (x / sigma) ** 2)
    return k / jnp.sum(k)


SSIM_PADDINGS = ("reflect", "zero")


def _gaussian_filter(x: jax.Array, size: int, sigma: float, padding: str = "reflect"
                     ) -> jax.Array:
    """Separable Gaussian of ``[N, 1, H, W]`` with reflect (``scipy`` "reflect") or zero
    padding."""
    if padding not in SSIM_PADDINGS:
        raise ValueError(f"padding must be one of {SSIM_PADDINGS}, got {padding!r}")
    r = (size - 1) // 2
    taps = _gaussian_taps(size, sigma)
    x = jnp.pad(x, ((0, 0), (0, 0), (r, r), (r, r)),
                mode="symmetric" if padding == "reflect" else "constant")
    return _conv(_conv(x, taps[:, None]), taps[None, :])


def ssim_map(x: jax.Array, y: jax.Array, *, data_range: float = 1.0, window: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
             padding: str = "reflect") -> jax.Array:
    """Per-pixel SSIM of ``x`` and ``y`` ``[B, H, W, C]``, averaged over channels: ``[B, H, W]``.

    Local means, variances and covariance are Gaussian-weighted (``window`` taps, ``sigma``),
    population estimates; ``C1 = (k1 * data_range)^2``, ``C2 = (k2 * data_range)^2``;
    ``padding`` (``"reflect"`` or ``"zero"``) extends the images for the local moments.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim_map needs two [B, H, W, C] images of one shape, got {x.shape} "
                         f"and {y.shape}")
    b, h, w, c = x.shape
    px, py = _per_channel(x), _per_channel(y)
    stats = _gaussian_filter(jnp.concatenate([px, py, px * px, py * py, px * py]),
                             window, sigma, padding)  # all five moments in one pass
    ux, uy, uxx, uyy, uxy = jnp.split(stats[:, 0], 5)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s.reshape(b, c, h, w), axis=1)


def ssim_loss(x: jax.Array, y: jax.Array, *, data_range: float = 1.0,
              padding: str = "reflect") -> jax.Array:
    """``1 - mean SSIM`` over all pixels of the batch (a scalar to minimise)."""
    return 1.0 - jnp.mean(ssim_map(x, y, data_range=data_range, padding=padding))


_PREWITT_X = np.asarray([[1.0, 0.0, -1.0]] * 3, np.float32) / 3.0


def _gradient_magnitude(x: jax.Array) -> jax.Array:
    """Prewitt gradient magnitude of ``[N, 1, H, W]`` with zero padding: ``[N, 1, H, W]``."""
    padded = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    gx, gy = _conv(padded, _PREWITT_X), _conv(padded, _PREWITT_X.T)
    return jnp.sqrt(gx * gx + gy * gy + 1e-12)


def gms_map(x: jax.Array, y: jax.Array, c: float = 0.0026) -> jax.Array:
    """Gradient magnitude similarity per pixel and channel: ``[B, H, W, C] x 2 -> [B, C, H, W]``
    (1 where the gradient magnitudes agree)."""
    b, h, w, ch = x.shape
    g1, g2 = _gradient_magnitude(_per_channel(x)), _gradient_magnitude(_per_channel(y))
    return ((2 * g1 * g2 + c) / (g1 * g1 + g2 * g2 + c)).reshape(b, ch, h, w)


def _halve(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 of ``[B, H, W, C]`` (odd edges dropped)."""
    b, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return jnp.mean(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _pyramid(x: jax.Array, y: jax.Array, scales: int) -> list[jax.Array]:
    """``gms_map`` of ``x, y`` and of ``scales - 1`` successive halvings of both."""
    if scales < 1 or min(x.shape[1:3]) < 2 ** (scales - 1):
        raise ValueError(f"msgms needs scales >= 1 and images of at least 2^(scales-1) pixels; "
                         f"got scales={scales} for images {x.shape[1:3]}")
    out = []
    for s in range(scales):
        if s:
            x, y = _halve(x), _halve(y)
        out.append(gms_map(x, y))
    return out


def msgms_loss(x: jax.Array, y: jax.Array, scales: int = 4) -> jax.Array:
    """RIAD's MSGMS loss: ``1/S sum_s mean(1 - GMS_s)`` (each scale at its own size)."""
    return jnp.mean(jnp.stack([jnp.mean(1.0 - g) for g in _pyramid(x, y, scales)]))


def msgms_map(x: jax.Array, y: jax.Array, scales: int = 4) -> jax.Array:
    """RIAD's MSGMS anomaly map ``[B, H, W]``: ``1 -`` the mean over scales (each upsampled
    bilinearly, half-pixel centres) and channels of ``GMS``."""
    b, h, w, _ = x.shape
    total = jnp.zeros((b, h, w), jnp.float32)
    for g in _pyramid(x, y, scales):
        g = jnp.mean(g, axis=1)
        total = total + jax.image.resize(g, (b, h, w), method="bilinear", antialias=False)
    return 1.0 - total / scales


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array,
                     fake: jax.Array, eps: jax.Array) -> jax.Array:
    """WGAN-GP penalty ``mean_i (|| d critic(x_i) / d x_i ||_2 - 1)^2``.

    ``x_i = eps_i real_i + (1 - eps_i) fake_i`` with ``eps [B]`` (draw it ``U[0, 1]``);
    ``critic: [B, ...] -> [B]`` (or ``[B, 1]``) scores each sample on its own. The norm is
    over every element of one sample. Weight it with lambda (10 in the paper) in the critic's
    loss.
    """
    shape = (-1,) + (1,) * (real.ndim - 1)
    mixed = eps.reshape(shape) * real + (1.0 - eps.reshape(shape)) * fake
    grads = jax.grad(lambda z: jnp.sum(critic(z)))(mixed)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1) + 1e-12)
    return jnp.mean(jnp.square(norms - 1.0))
