"""A k x k TF-"SAME" convolution as one matrix product over the image's patches ("im2col").

For an input with few channels (a network's stem on RGB images) the ``k * k`` shifted,
strided views of the padded input are concatenated into ``[B, h, w, k*k*C]`` patch vectors
and multiplied by the kernel reshaped to ``[k*k*C, F]``. XLA differentiates that into two
matrix products, where its CPU backend lowers the convolution's kernel gradient as a slow
convolution (measured on EfficientNet-Lite's stem: ``experiments/method_notes.md#nn``).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from anomjax.nn.same_padding import pad_same, strided_window


class PatchConv(nn.Module):
    """``[B, H, W, C] -> [B, ceil(H/s), ceil(W/s), features]``, bias-free, TF "SAME" padding.

    Parameters are laid out as ``nn.Conv(features, (k, k), padding="SAME")``'s
    (``kernel [k, k, C, features]``), so pretrained weights load unchanged; the numbers are
    the convolution's up to rounding.
    """

    features: int
    kernel_size: int
    stride: int = 1
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, channels = self.kernel_size, self.stride, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, channels, self.features),
                            jnp.float32)
        xp, out_hw, _ = pad_same(x, (k, k), (s, s))
        patches = jnp.concatenate([strided_window(xp, dy, dx, out_hw, (s, s))
                                   for dy in range(k) for dx in range(k)], axis=-1)
        y = jnp.dot(patches.reshape(-1, k * k * channels),
                    kernel.reshape(k * k * channels, self.features))
        return y.reshape(x.shape[0], *out_hw, self.features)
