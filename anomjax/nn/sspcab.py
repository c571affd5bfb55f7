"""SSPCAB: the self-supervised predictive convolutional attentive block (Ristea et al., CVPR
2022), a layer any network can insert.

A masked convolution predicts every position from four ``k x k`` sub-kernels placed at the
corners of a ``(2k + 2d + 1)``-wide receptive field whose centre (``(2d + 1)`` wide) is hidden,
then a squeeze-and-excitation block (reduction ``r``) reweights the channels:

    y = relu(K1 * x + K2 * x + K3 * x + K4 * x);  out = y * sigmoid(W2 relu(W1 mean_hw(y)))

The block is trained to reproduce its input, ``loss = mean (out - x)^2`` (:func:`sspcab_loss`),
added with a weight (0.1 in DRAEM + SSPCAB) to the host network's loss. As in the authors'
``sspcab_torch.py``: zero padding by ``k + d``, each sub-kernel a ``k x k`` convolution with
bias on the padded input shifted to one corner, default ``k = 1``, ``d = 1``, ``r = 8``; the
SE layer's two dense layers have biases.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


class SSPCAB(nn.Module):
    """``[B, H, W, C] -> [B, H, W, C]`` masked convolution plus channel attention.

    Attributes:
      channels: input (and output) channels.
      kernel_dim: ``k``, the side of each of the four sub-kernels.
      dilation: ``d``, the distance between the sub-kernels and the hidden centre.
      reduction_ratio: ``r`` of the squeeze-and-excitation layer.
      kernel_init: initialiser of the sub-kernels (the host network's convolution init).
    """

    channels: int
    kernel_dim: int = 1
    dilation: int = 1
    reduction_ratio: int = 8
    kernel_init: Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.channels:
            raise ValueError(f"SSPCAB expects {self.channels} channels, got {x.shape[-1]}")
        k, d = self.kernel_dim, self.dilation
        pad, border = k + d, k + 2 * d + 1
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        h, w = xp.shape[1] - border, xp.shape[2] - border
        corners = ((0, 0), (border, 0), (0, border), (border, border))  # (row, col) offsets
        y = 0.0
        for i, (dy, dx) in enumerate(corners):
            conv = nn.Conv(self.channels, (k, k), padding="VALID", kernel_init=self.kernel_init,
                           name=f"conv{i + 1}")
            y = y + conv(xp[:, dy:dy + h, dx:dx + w])
        y = nn.relu(y)
        squeeze = jnp.mean(y, axis=(1, 2))
        hidden = nn.relu(nn.Dense(max(self.channels // self.reduction_ratio, 1),
                                  name="se_fc1")(squeeze))
        gate = nn.sigmoid(nn.Dense(self.channels, name="se_fc2")(hidden))
        return y * gate[:, None, None, :]


def sspcab_loss(inputs: jax.Array, outputs: jax.Array) -> jax.Array:
    """SSPCAB's self-supervised reconstruction loss: mean squared error of the block's output
    ``[B, H, W, C]`` against its input (PyTorch ``MSELoss``)."""
    return jnp.mean(jnp.square(outputs.astype(jnp.float32) - inputs.astype(jnp.float32)))
