"""FAVAE: feature-augmented VAE (Dehaene & Eline, "Anomaly localization by modeling perceptual
features", 2020).

A VAE (``vae.GaussianVAE``: Gaussian posterior and pixel likelihood as ``distrax``
distributions) trained to reconstruct the image not only in pixel space but also in the
feature spaces of a frozen pretrained CNN ``phi``: the loss adds to ``-ELBO`` (per value) the
feature reconstruction error ``feature_weight * sum_l mean (phi_l(x) - phi_l(x_hat))^2`` over
the taps ``l``, with ``x_hat`` the decoder's mean. No gradient reaches ``phi``.

The map is, as in the paper, the feature reconstruction error plus a gradient map:

* feature error: ``sum_l`` of the per-position ``mean_c (phi_l(x) - phi_l(x_hat(mu)))^2``,
  upsampled bilinearly to the input size;
* gradient: ``mean_c | d loss(x) / d x |`` at ``z = mu``.

Each term is divided by its mean over the training images (measured in ``calibrate`` after
training) before they are added, so that neither dominates by its units; the image score is
the maximum of the smoothed sum (shared Gaussian, ``sigma``).

Deviations: the paper's feature extractor is an ImageNet VGG; the default here is
EfficientNet-Lite0 ``stage2, stage3`` (strides 4/8; ``backbone=``, ``taps=`` to change it);
the per-term normalisation is this library's way of adding two maps of different units; the
VAE network is Bergmann et al.'s convolutional autoencoder layout (see ``ae``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.reconstruction.constant_adam import ConstantAdamMethod
from anomjax.methods.reconstruction.vae import GaussianVAE, elbo, vae_network
from anomjax.nn.fast_init import init_variables
from anomjax.nn.teacher import check_taps, frozen_features, teacher, teacher_variables
from anomjax.scoring import to_scores, upsample
from anomjax.types import Batch, Scores


@register
@dataclasses.dataclass(frozen=True)
class FAVAE(ConstantAdamMethod):
    """Feature-augmented VAE (see the module docstring).

    Attributes:
      backbone, backbone_weights, taps: the frozen feature network and its layers.
      latent, width: the VAE (see ``vae``).
      feature_weight: weight of the feature reconstruction error in the loss.
      learning_rate: Adam.
      sigma: Gaussian smoothing of the map, in pixels.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "favae"

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ("stage2", "stage3")
    latent: int = hyper(100, low=1, high=4096)
    width: int = hyper(32, low=1, high=1024)
    feature_weight: float = hyper(1.0, low=0.0)
    learning_rate: float = hyper(5e-4, low=0.0, high=1.0, low_open=True)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _net(self, images: jax.Array, params: Any = None) -> GaussianVAE:
        """The network for ``images`` (and, given ``params``, checked to fit them)."""
        return vae_network(self.name, self.width, self.latent, images, params)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Random VAE, the frozen feature network, unit map normalisers."""
        check_taps(self.name, self.backbone, self.taps)
        variables = init_variables(self._net(images), key, jnp.asarray(images[:1]),
                                   special={"log_scale": lambda shape, rng: 0.0})
        return {"params": variables["params"],
                "frozen": {"teacher": teacher_variables(self.backbone, self.backbone_weights)},
                "normalizer": {"feature": jnp.ones(()), "gradient": jnp.ones(())}}

    def _feature_errors(self, state: State, images: jax.Array,
                        recon: jax.Array) -> list[jax.Array]:
        """Per-position ``mean_c (phi_l(x) - phi_l(x_hat))^2`` ``[B, h_l, w_l]`` per tap."""
        net = teacher(self.backbone)
        both = frozen_features(net, state["frozen"]["teacher"],
                               jnp.concatenate([images, recon]), self.taps)
        n = images.shape[0]
        return [jnp.mean(jnp.square(f[:n].astype(jnp.float32) - f[n:]), axis=-1) for f in both]

    def _objective(self, params: Any, state: State, images: jax.Array, key: jax.Array | None,
                   noise: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
        """Per-image loss ``[B]`` and the logged terms; the ELBO's sample is drawn from
        ``key``, or given by the standard normal ``noise [B, latent]``, or ``z = mu`` when
        neither is given (``vae.elbo``)."""
        net = self._net(images)
        values, aux = elbo(net, params, images, key, noise)
        mu, _ = net.apply({"params": params}, images, method=GaussianVAE.encode)
        recon = net.apply({"params": params}, mu, method=GaussianVAE.decode)
        errors = self._feature_errors(state, images, recon)
        feature = sum(jnp.mean(e, axis=(1, 2)) for e in errors)
        aux = {**aux, "feature_error": jnp.mean(feature)}
        return -values / images[0].size + self.feature_weight * feature, aux

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``-ELBO`` per value plus the weighted feature reconstruction error."""
        per_image, aux = self._objective(params, state, images, key)
        return jnp.mean(per_image), aux

    def _maps(self, state: State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Un-normalised feature-error and gradient maps ``[B, H, W]`` each."""
        params = state["params"]
        net = self._net(images, params)
        size = images.shape[1:3]
        recon = net.apply({"params": params}, images)
        feature = sum(upsample(e, size) for e in self._feature_errors(state, images, recon))
        grads = jax.grad(lambda x: jnp.sum(self._objective(params, state, x, None)[0]))(images)
        return feature, jnp.mean(jnp.abs(grads), axis=-1)

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """The mean of each map over the training images (the normalisers of the sum)."""
        maps = jax.jit(self._maps)
        sums, count = np.zeros(2), 0
        for batch in batches:
            feature, gradient = maps(state, jnp.asarray(batch.images, jnp.float32))
            sums += [float(jnp.sum(jnp.mean(feature, axis=(1, 2)))),
                     float(jnp.sum(jnp.mean(gradient, axis=(1, 2))))]
            count += len(batch.images)
        means = np.maximum(sums / max(count, 1), 1e-12)
        return {**state, "normalizer": {"feature": jnp.asarray(means[0], jnp.float32),
                                        "gradient": jnp.asarray(means[1], jnp.float32)}}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Normalised feature error + normalised gradient map, smoothed; image score = max."""
        feature, gradient = self._maps(state, images)
        norm = state["normalizer"]
        maps = feature / norm["feature"] + gradient / norm["gradient"]
        return to_scores(maps, images.shape[1:3], self.sigma, sigma_side=self.sigma_side)
