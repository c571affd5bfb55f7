"""Convolutional encoders and decoders shared by the reconstruction and generative methods.

Two families, NHWC, float32 parameters:

* :class:`ConvEncoder` / :class:`ConvDecoder`: a stack of ``(features, kernel, stride)``
  convolutions with LeakyReLU(0.2), closed by a bottleneck convolution whose kernel covers the
  remaining spatial extent (a ``[B, 1, 1, latent]`` code), and its mirror of transposed
  convolutions. :data:`BERGMANN_LAYERS` is the architecture of Bergmann et al. (VISAPP 2019,
  Table 1, for 128 x 128 inputs: stride 16 before the 8 x 8 bottleneck).
* :class:`DCGANEncoder` / :class:`DCGANDecoder` (Radford et al. 2016, as used by AnoGAN,
  GANomaly and f-AnoGAN): 4 x 4 stride-2 convolutions doubling the width down to 4 x 4, then
  a 4 x 4 VALID convolution to the code; the decoder mirrors it with transposed convolutions
  and ends in ``tanh`` (images in ``[-1, 1]``). ``norm`` chooses BatchNorm (batch statistics
  in training, running ones at test; PyTorch momentum 0.1), LayerNorm (the WGAN-GP critic,
  which must not couple samples) or none. Initialise them with
  ``anomjax.nn.fast_init.init_variables(..., policy="dcgan")`` (N(0, 0.02) kernels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from anomjax.nn.subpixel import SubpixelConvTranspose

Layer = tuple[int, int, int]  # (features, kernel, stride)

#: Bergmann et al.'s encoder before the bottleneck (features, kernel, stride).
BERGMANN_LAYERS: tuple[Layer, ...] = (
    (32, 4, 2), (32, 4, 2), (32, 3, 1), (64, 4, 2), (64, 3, 1), (128, 4, 2), (64, 3, 1),
    (32, 3, 1))


def _stride(layers: Sequence[Layer]) -> int:
    return math.prod(s for _, _, s in layers)


def bottleneck_size(image_size: int, layers: Sequence[Layer]) -> int:
    """Spatial size before the bottleneck; a clear error when ``image_size`` does not fit."""
    stride = _stride(layers)
    if image_size % stride or image_size < stride:
        raise ValueError(f"image size {image_size} must be a multiple of the encoder's stride "
                         f"{stride}")
    return image_size // stride


class ConvEncoder(nn.Module):
    """``[B, H, W, C] -> [B, latent]`` (``spatial=True``: the ``[B, h, w, c]`` map before the
    bottleneck)."""

    layers: tuple[Layer, ...]
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array, spatial: bool = False) -> jax.Array:
        for i, (features, kernel, stride) in enumerate(self.layers):
            x = nn.leaky_relu(nn.Conv(features, (kernel, kernel), (stride, stride), "SAME",
                                      name=f"conv{i}")(x), 0.2)
        if spatial:
            return x
        size = x.shape[1:3]
        z = nn.Conv(self.latent, size, padding="VALID", name="bottleneck")(x)
        return z.reshape(z.shape[0], self.latent)


class ConvDecoder(nn.Module):
    """``[B, latent] -> [B, H, W, channels]`` in ``[0, 1]`` (sigmoid), mirroring
    :class:`ConvEncoder` (``spatial=True``: from the ``[B, h, w, c]`` map instead)."""

    layers: tuple[Layer, ...]
    image_size: int
    channels: int = 3

    @nn.compact
    def __call__(self, z: jax.Array, spatial: bool = False) -> jax.Array:
        size = bottleneck_size(self.image_size, self.layers)
        if spatial:
            x = z
        else:
            x = nn.ConvTranspose(self.layers[-1][0], (size, size), padding="VALID",
                                 name="bottleneck")(
                z.reshape(z.shape[0], 1, 1, -1))
            x = nn.leaky_relu(x, 0.2)
        mirrored = list(reversed(self.layers))
        for i, (_, kernel, stride) in enumerate(mirrored):
            last = i == len(mirrored) - 1
            features = self.channels if last else mirrored[i + 1][0]
            x = SubpixelConvTranspose(features, kernel, stride, "SAME",
                                      name=f"deconv{i}")(x)
            x = nn.sigmoid(x) if last else nn.leaky_relu(x, 0.2)
        return x


def conv_trained_size(encoder_params: dict, layers: Sequence[Layer]) -> int:
    """The image size a :class:`ConvEncoder` was built for, from its bottleneck kernel."""
    return int(encoder_params["bottleneck"]["kernel"].shape[0]) * _stride(layers)


def dcgan_trained_size(encoder_params: dict) -> int:
    """The image size a :class:`DCGANEncoder` was built for (4 * 2^number of its convs)."""
    return 4 * 2 ** sum(name.startswith("conv") for name in encoder_params)


def dcgan_depth(image_size: int) -> int:
    """Stride-2 layers from ``image_size`` to 4 x 4; a power of two >= 8 is required."""
    depth = int(round(math.log2(image_size / 4))) if image_size > 0 else -1
    if depth < 1 or 4 * 2 ** depth != image_size:
        raise ValueError(f"DCGAN networks need a power-of-two image size >= 8, got {image_size}")
    return depth


def _norm(kind: str, train: bool, name: str) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            name=name)
    if kind == "layer":
        return nn.LayerNorm(epsilon=1e-5, reduction_axes=(-3, -2, -1),
                            name=name)
    if kind == "none":
        return None
    raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {kind!r}")


class DCGANEncoder(nn.Module):
    """``[B, S, S, C] -> ([B, latent], features [B, 4, 4, width * 2^(depth-1)])``.

    The features (after the last stride-2 block) are what GANomaly and AnoGAN match between
    real and generated images.
    """

    image_size: int
    width: int
    latent: int
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        depth = dcgan_depth(self.image_size)
        for i in range(depth):
            x = nn.Conv(self.width * 2 ** i, (4, 4), (2, 2), ((1, 1), (1, 1)), use_bias=False,
                        name=f"conv{i}")(x)
            norm = _norm(self.norm, train, f"norm{i}") if i else None
            if norm is not None:
                x = norm(x)
            x = nn.leaky_relu(x, 0.2)
        z = nn.Conv(self.latent, (4, 4), padding="VALID", use_bias=False,
                    name="final")(x)
        return z.reshape(z.shape[0], self.latent), x


class DCGANDecoder(nn.Module):
    """``[B, latent] -> [B, S, S, channels]`` in ``[-1, 1]`` (tanh)."""

    image_size: int
    width: int
    channels: int = 3
    norm: str = "batch"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        depth = dcgan_depth(self.image_size)
        x = z.reshape(z.shape[0], 1, 1, -1)
        x = nn.ConvTranspose(self.width * 2 ** (depth - 1), (4, 4), padding="VALID",
                             use_bias=False, name="initial")(x)
        for i in range(depth):
            norm = _norm(self.norm, train, f"norm{i}")
            if norm is not None:
                x = norm(x)
            x = nn.relu(x)
            last = i == depth - 1
            features = self.channels if last else self.width * 2 ** (depth - 2 - i)
            x = SubpixelConvTranspose(features, 4, 2, "SAME", use_bias=False,
                                      name=f"deconv{i}")(x)
        return jnp.tanh(x)


class DCGANCritic(nn.Module):
    """Discriminator ``[B, S, S, C] -> (logit [B], features [B, 4, 4, c])``: a DCGAN encoder
    with a one-channel code."""

    image_size: int
    width: int
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        logit, feats = DCGANEncoder(self.image_size, self.width, 1, self.norm,
                                    name="body")(x, train)
        return logit[:, 0], feats
