"""Variational autoencoder (Kingma & Welling 2014) for anomaly localisation, with its
distributions in ``distrax``.

The encoder (Bergmann et al.'s convolutional encoder, ``autoencoder.bergmann_layers``)
gives the Gaussian posterior ``q(z | x) = distrax.MultivariateNormalDiag(mu, sigma)`` over a
``latent``-dimensional code; the prior is ``N(0, I)``; the decoder gives the likelihood
``p(x | z) = distrax.Independent(distrax.Normal(x_hat(z), s), 3)`` with one learned scale
``s`` (``log_scale`` parameter). Training maximises the ELBO
``E_q[log p(x | z)] - KL(q || p)`` with one reparameterised sample and the KL term from
``distrax`` (``posterior.kl_divergence(prior)``); the loss is ``-ELBO`` per image divided by
its number of values (``S * S * 3``), which only rescales the gradient.

Maps (``map_type``), both at ``z = mu`` (deterministic):

* ``"reconstruction"``: the per-pixel squared error ``mean_c (x - x_hat(mu))^2``;
* ``"gradient"``: ``mean_c | d ELBO(x) / d x |``, the gradient-based localisation the survey
  describes (e.g. Dehaene et al., ICLR 2020): pixels the model would change most to make the
  image more likely.

The image score is the maximum of the smoothed map (shared Gaussian, ``sigma``). Choices of
this library, not of one paper: the network, the learned global likelihood scale, Adam
lr 5e-4, the smoothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from anomjax._distrax import distrax
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images, check_trained_size
from anomjax.methods.reconstruction.autoencoder import bergmann_layers
from anomjax.methods.reconstruction.constant_adam import ConstantAdamMethod
from anomjax.nn.conv_ae import ConvDecoder, ConvEncoder, Layer, conv_trained_size
from anomjax.nn.fast_init import init_variables
from anomjax.nn.losses import squared_error_map
from anomjax.precision import scored_at_full_precision
from anomjax.scoring import to_scores
from anomjax.types import Scores

MAPS = ("reconstruction", "gradient")


class GaussianVAE(nn.Module):
    """Encoder to posterior parameters and decoder to the likelihood mean.

    ``encode(x [B, S, S, 3]) -> (mu, log_sigma) [B, latent]``; ``decode(z, size) -> x_hat
    [B, S, S, 3]`` in ``[0, 1]``; the ``log_scale`` parameter ``[]`` is the likelihood's.
    """

    layers: tuple[Layer, ...]
    latent: int
    image_size: int

    def setup(self) -> None:
        self.encoder = ConvEncoder(self.layers, 2 * self.latent)
        self.decoder = ConvDecoder(self.layers, self.image_size)
        self.log_scale = self.param("log_scale", nn.initializers.zeros, ())

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mu, log_sigma = jnp.split(self.encoder(x), 2, axis=-1)
        return mu, log_sigma

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x)[0])


def elbo(net: GaussianVAE, params: Any, images: jax.Array, key: jax.Array | None,
         noise: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-image ELBO ``[B]`` and its two terms (batch means), with the reparameterised
    sample ``z`` drawn from ``key``, or ``z = mu + sigma * noise`` for a given standard normal
    draw ``noise [B, latent]``, or ``z = mu`` when neither is given."""
    variables = {"params": params}
    mu, log_sigma = net.apply(variables, images, method=GaussianVAE.encode)
    posterior = distrax.MultivariateNormalDiag(mu, jnp.exp(log_sigma))
    prior = distrax.MultivariateNormalDiag(jnp.zeros_like(mu), jnp.ones_like(mu))
    if noise is not None:
        z = mu + jnp.exp(log_sigma) * noise
    else:
        z = mu if key is None else posterior.sample(seed=key)
    mean = net.apply(variables, z, method=GaussianVAE.decode)
    likelihood = distrax.Independent(
        distrax.Normal(mean, jnp.exp(params["log_scale"]) * jnp.ones_like(mean)), 3)
    log_lik = likelihood.log_prob(images.astype(jnp.float32))
    kl = posterior.kl_divergence(prior)
    return log_lik - kl, {"log_likelihood": jnp.mean(log_lik), "kl": jnp.mean(kl)}


def negative_elbo(net: GaussianVAE, params: Any, images: jax.Array, key: jax.Array | None,
                  noise: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss: ``-ELBO`` averaged over the batch and divided by the number of
    values of an image (``S * S * 3``), and the ELBO's terms (see :func:`elbo`)."""
    values, aux = elbo(net, params, images, key, noise)
    return -jnp.mean(values) / images[0].size, aux


def vae_network(method: str, width: int, latent: int, images: jax.Array,
                params: Any = None) -> GaussianVAE:
    """The :class:`GaussianVAE` of width ``width`` and code ``latent`` for ``images``
    ``[B, S, S, 3]`` (S a multiple of 16); given trained ``params``, checked to fit them."""
    check_images(method, images, multiple=16, square=True)
    layers = bergmann_layers(width)
    if params is not None:
        check_trained_size(method, images, conv_trained_size(params["encoder"], layers))
    return GaussianVAE(layers, latent, images.shape[1])


@register
@dataclasses.dataclass(frozen=True)
class VAE(ConstantAdamMethod):
    """Gaussian VAE with distrax distributions (see the module docstring).

    Attributes:
      latent: code size.
      width: encoder/decoder width (see ``ae``).
      map_type: ``"reconstruction"`` or ``"gradient"``.
      learning_rate: Adam.
      sigma: Gaussian smoothing of the map, in pixels.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "vae"

    latent: int = hyper(100, low=1, high=4096)
    width: int = hyper(32, low=1, high=1024)
    map_type: str = hyper("reconstruction", choices=MAPS)
    learning_rate: float = hyper(5e-4, low=0.0, high=1.0, low_open=True)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _net(self, images: jax.Array, params: Any = None) -> GaussianVAE:
        """The network for ``images`` (and, given ``params``, checked to fit them)."""
        return vae_network(self.name, self.width, self.latent, images, params)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Random encoder, decoder and likelihood scale (``log_scale = 0``)."""
        variables = init_variables(self._net(images), key, jnp.asarray(images[:1]),
                                   special={"log_scale": lambda shape, rng: 0.0})
        return {"params": variables["params"]}

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``-ELBO`` per value (one reparameterised sample per image)."""
        del state
        return negative_elbo(self._net(images), params, images, key)

    @scored_at_full_precision
    def score(self, state: State, images: jax.Array) -> Scores:
        """The chosen map (see the module docstring), smoothed; image score = its maximum."""
        net = self._net(images, state["params"])
        if self.map_type == "gradient":
            grads = jax.grad(lambda x: jnp.sum(elbo(net, state["params"], x, None)[0]))(images)
            maps = jnp.mean(jnp.abs(grads), axis=-1)
        else:
            maps = squared_error_map(images, net.apply({"params": state["params"]}, images))
        return to_scores(maps, images.shape[1:3], self.sigma, sigma_side=self.sigma_side)
