"""Convolutional autoencoder (Bergmann, Löwe, Fauser, Sattlegger & Steger, "Improving
Unsupervised Defect Segmentation by Applying Structural Similarity to Autoencoders", VISAPP
2019), trained with an L2, SSIM or MSGMS loss.

The paper's network (``anomjax.nn.conv_ae.BERGMANN_LAYERS``: eight convolutions of widths
32-32-32-64-64-128-64-32 with 4x4 stride-2 and 3x3 stride-1 kernels, LeakyReLU 0.2, a
bottleneck convolution over the remaining 8 x 8 of a 128 px input to a latent code of 100, and
the mirrored decoder of transposed convolutions). ``loss_type`` picks the training loss and the
map: ``"l2"`` the per-pixel squared residual, ``"ssim"`` (the paper's proposal; 11 x 11
Gaussian window) ``1 - SSIM``, ``"msgms"`` RIAD's multi-scale gradient magnitude dissimilarity
(all in ``anomjax.nn.losses``). The image score is the maximum of the map, after the shared
Gaussian smoothing (``sigma``).

Kept from the paper: the architecture, latent size 100, Adam with learning rate 2e-4 and
weight decay 1e-5. Deviations: the paper trains on 128 x 128 patches cropped from larger
(and for SSIM grayscale) images and scores overlapping patches; here the whole image at the
run's image size (a multiple of 16; the bottleneck kernel covers ``size / 16``) is
reconstructed, in RGB (SSIM/MSGMS averaged over channels); ``width`` scales all widths
(``width / 32`` times the paper's); the decoder ends in a sigmoid (images in ``[0, 1]``);
initialisation is Flax's LeCun normal drawn with NumPy; the smoothing of the map (``sigma``)
is the library's post-processing, not the paper's (``sigma=0`` turns it off).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images, check_trained_size
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.conv_ae import (
    BERGMANN_LAYERS,
    ConvDecoder,
    ConvEncoder,
    Layer,
    conv_trained_size,
)
from anomjax.nn.fast_init import init_variables
from anomjax.nn.losses import l2_loss, msgms_loss, msgms_map, squared_error_map, ssim_loss, ssim_map
from anomjax.precision import scored_at_full_precision
from anomjax.scoring import to_scores
from anomjax.types import Scores

RESIDUALS = ("l2", "ssim", "msgms")


def bergmann_layers(width: int) -> tuple[Layer, ...]:
    """The paper's encoder layers with widths scaled by ``width / 32``."""
    return tuple((max(f * width // 32, 1), k, s) for f, k, s in BERGMANN_LAYERS)


def residual_loss(kind: str, x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Training loss ``"l2"`` (mean squared error), ``"ssim"`` (1 - SSIM) or ``"msgms"``."""
    if kind == "l2":
        return l2_loss(x, x_hat)
    if kind == "ssim":
        return ssim_loss(x, x_hat)
    return msgms_loss(x, x_hat)


def residual_map(kind: str, x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Per-pixel dissimilarity ``[B, H, W]`` matching :func:`residual_loss`."""
    if kind == "l2":
        return squared_error_map(x, x_hat)
    if kind == "ssim":
        return 1.0 - ssim_map(x, x_hat)
    return msgms_map(x, x_hat)


class Autoencoder(nn.Module):
    """``[B, S, S, 3] -> [B, S, S, 3]`` through a ``[B, latent]`` code."""

    layers: tuple[Layer, ...]
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        z = ConvEncoder(self.layers, self.latent, name="encoder")(x)
        return ConvDecoder(self.layers, x.shape[1], x.shape[-1], name="decoder")(z)


@register
@dataclasses.dataclass(frozen=True)
class AE(TrainedMethod):
    """Bergmann et al.'s convolutional autoencoder (see the module docstring).

    Attributes:
      loss_type: ``"l2"``, ``"ssim"`` or ``"msgms"``: training loss and map.
      latent: code size (paper: 100).
      width: width of the first layers (paper: 32; all widths scale with it).
      learning_rate, weight_decay: Adam (coupled L2 weight decay, as PyTorch's Adam).
      sigma: Gaussian smoothing of the map, in pixels.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "ae"

    loss_type: str = hyper("ssim", choices=RESIDUALS)
    latent: int = hyper(100, low=1, high=4096)
    width: int = hyper(32, low=1, high=1024)
    learning_rate: float = hyper(2e-4, low=0.0, high=1.0, low_open=True)
    weight_decay: float = hyper(1e-5, low=0.0, high=1.0)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _net(self, images: jax.Array) -> Autoencoder:
        check_images(self.name, images, multiple=16, square=True)
        return Autoencoder(bergmann_layers(self.width), self.latent)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Random autoencoder parameters for images of this size."""
        net = self._net(images)
        return {"params": init_variables(net, key, jnp.asarray(images[:1]))["params"]}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam with coupled weight decay; constant rate."""
        del total_steps
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.adam(self.learning_rate))

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The chosen reconstruction loss of ``images [B, S, S, 3]``."""
        del state, key
        recon = self._net(images).apply({"params": params}, images)
        return residual_loss(self.loss_type, images, recon), {}

    @scored_at_full_precision
    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = the loss's per-pixel dissimilarity, smoothed; image score = its maximum."""
        net = self._net(images)
        check_trained_size(self.name, images,
                           conv_trained_size(state["params"]["encoder"], net.layers))
        recon = net.apply({"params": state["params"]}, images)
        return to_scores(residual_map(self.loss_type, images, recon), images.shape[1:3], self.sigma,
                         sigma_side=self.sigma_side)
