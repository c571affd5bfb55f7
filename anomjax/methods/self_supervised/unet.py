"""The convolutional encoder-decoders of DRAEM (and RIAD, from the same authors), in Flax.

Following ``VitjanZ/DRAEM/model_unet.py``: blocks of two ``3x3`` convolutions (with bias),
each followed by BatchNorm and ReLU; 2x2 max pooling between encoder blocks; each decoder
stage upsamples by 2 (bilinear, ``align_corners=True``), applies one conv-BN-ReLU and a
block; a final ``3x3`` convolution gives the output. Weights are drawn as the authors'
``weights_init`` does: convolution kernels ``N(0, 0.02)``, BatchNorm scales ``N(1, 0.02)``,
biases and BatchNorm offsets zero (PyTorch's default conv-bias init differs, it is not reset
there; here biases start at zero).

BatchNorm layers are built in inference mode (running statistics); training runs them with
batch statistics through :func:`anomjax.nn.interceptors.batch_norm_in_train_mode`, as
PyTorch's ``train()`` mode does.

* :class:`ReconstructiveNet` ``[B, H, W, 3] -> [B, H, W, 3]``: encoder widths ``w, 2w, 4w,
  8w, 8w`` (4 poolings, no skip connections), decoder back to ``w``; the deepest block can be
  an :class:`~anomjax.nn.sspcab.SSPCAB` (DRAEM + SSPCAB).
* :class:`UNet` ``[B, H, W, C_in] -> [B, H, W, C_out]``: DRAEM's discriminative network,
  encoder widths ``w, 2w, 4w, 8w, 8w, 8w`` (5 poolings) and a decoder with skip connections.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anomjax.nn.sspcab import SSPCAB

conv_init = nn.initializers.normal(0.02)


def _bn_scale_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
                   ) -> jax.Array:
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


@functools.cache
def _align_corners_matrix(n: int) -> np.ndarray:
    """``[2n, n]`` linear-interpolation weights of a 2x upsampling with aligned corners."""
    out = np.zeros((2 * n, n), np.float32)
    pos = np.arange(2 * n) * (n - 1) / max(2 * n - 1, 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = (pos - low).astype(np.float32)
    out[np.arange(2 * n), low] += 1 - frac
    out[np.arange(2 * n), high] += frac
    return out


def upsample2x(x: jax.Array, precision: Precision = None) -> jax.Array:
    """Bilinear 2x upsampling of ``[B, H, W, C]`` with ``align_corners=True`` (PyTorch's
    ``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)``)."""
    rows = jnp.asarray(_align_corners_matrix(x.shape[1]), x.dtype)
    cols = jnp.asarray(_align_corners_matrix(x.shape[2]), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=precision)
    return jnp.einsum("pw,bowc->bopc", cols, x, precision=precision)


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 of ``[B, H, W, C]``."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


Precision = jax.lax.Precision | None


class ConvBNReLU(nn.Module):
    """``3x3`` convolution (with bias), BatchNorm, ReLU."""

    features: int
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), padding=1, kernel_init=conv_init,
                    precision=self.precision)(x)
        x = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5,
                         scale_init=_bn_scale_init)(x)
        return nn.relu(x)


class Block(nn.Module):
    """Two :class:`ConvBNReLU` of widths ``features``."""

    features: tuple[int, int]
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for f in self.features:
            x = ConvBNReLU(f, self.precision)(x)
        return x


class Up(nn.Module):
    """2x upsampling (aligned corners) then one :class:`ConvBNReLU`."""

    features: int
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ConvBNReLU(self.features, self.precision)(upsample2x(x, self.precision))


class ReconstructiveNet(nn.Module):
    """DRAEM's reconstructive subnetwork (see the module docstring).

    Returns ``(reconstruction [B, H, W, out], sspcab_in, sspcab_out)``; the last two are the
    deepest block's input and output (``[B, H/16, W/16, 8w]``; used by SSPCAB's loss).
    """

    width: int = 128
    out_channels: int = 3
    sspcab: bool = False
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        w = self.width
        for f in (w, 2 * w, 4 * w, 8 * w):
            x = max_pool2(Block((f, f), self.precision)(x))
        deep_in = x
        if self.sspcab:
            x = SSPCAB(8 * w, kernel_init=conv_init)(x)
        else:
            x = Block((8 * w, 8 * w), self.precision)(x)
        deep_out = x
        for c_in, c_out in ((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w)):
            x = Block((c_in, c_out), self.precision)(Up(c_in, self.precision)(x))
        x = nn.Conv(self.out_channels, (3, 3), padding=1, kernel_init=conv_init,
                       precision=self.precision)(x)
        return x, deep_in, deep_out


class UNet(nn.Module):
    """DRAEM's discriminative subnetwork: ``[B, H, W, C_in] -> [B, H, W, out_channels]``
    logits (H and W divisible by ``2 ** depth``)."""

    width: int = 64
    out_channels: int = 2
    depth: int = 5
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.width
        widths = [w * min(2 ** i, 8) for i in range(self.depth + 1)]
        skips = []
        for i, f in enumerate(widths):
            if i:
                x = max_pool2(x)
            x = Block((f, f), self.precision)(x)
            skips.append(x)
        for i in range(self.depth - 1, -1, -1):
            f = widths[max(i - 1, 0)]
            x = jnp.concatenate([Up(f, self.precision)(x), skips[i]], axis=-1)
            x = Block((f, f), self.precision)(x)
        return nn.Conv(self.out_channels, (3, 3), padding=1, kernel_init=conv_init,
                       precision=self.precision)(x)
