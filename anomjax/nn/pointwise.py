"""1x1 ("pointwise") convolution as a matrix product over channels.

Parameters are laid out as ``nn.Conv(features, (1, 1))``'s (``kernel [1, 1, C, F]``, optional
``bias [F]``), so pretrained weights load unchanged. Computing it as ``[B*H*W, C] @ [C, F]``
gives the same numbers (up to rounding) and lets XLA differentiate it into two plain matrix
products. On the CPU backend the convolution's weight gradient is lowered as a convolution
with a ``H x W`` window, which is slow (measured: ``experiments/method_notes.md#nn``).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


class PointwiseConv(nn.Module):
    """``[B, H, W, C] -> [B, ceil(H/s), ceil(W/s), features]``: a 1x1 convolution with stride
    ``s`` (it samples every ``s``-th row and column, as a strided 1x1 convolution does)."""

    features: int
    stride: int = 1
    use_bias: bool = False
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (1, 1, channels, self.features),
                            jnp.float32)
        if self.stride != 1:
            x = x[:, ::self.stride, ::self.stride, :]
        y = jnp.dot(x.reshape(-1, channels), kernel[0, 0])  # promotes like nn.Conv
        y = y.reshape(*x.shape[:-1], self.features)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return y
