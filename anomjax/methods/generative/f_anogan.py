"""f-AnoGAN (Schlegl, Seeböck, Waldstein, Langs & Schmidt-Erfurth, Medical Image Analysis
2019): a WGAN-GP, then an encoder trained into its latent space (izi_f).

Phase 1 (the first ``gan_fraction`` of the training steps): a Wasserstein GAN with gradient
penalty (Gulrajani et al. 2017). The critic ``D`` (DCGAN layout with LayerNorm, which the
penalty requires instead of BatchNorm) minimises ``mean D(G(z)) - mean D(x) + 10 * GP``
every step; the generator ``G`` (DCGAN, BatchNorm) minimises ``-mean D(G(z))`` every
``n_critic = 5``-th step (``Update.every``); ``z ~ U(-1, 1)``; Adam lr 1e-4, betas (0, 0.9).

Phase 2 (the remaining steps): ``G`` and ``D`` frozen (running BatchNorm statistics), an
encoder ``E`` (the critic's layout, ``tanh`` output in the prior's range) is trained with the
paper's izi_f loss

    L = 1/n ||x - G(E(x))||^2 + kappa / n_d ||f(x) - f(G(E(x)))||^2,   kappa = 1,

``f`` the critic's features before its last layer. Adam lr 1e-4 (betas 0.9, 0.999).

Score (the paper's): the same two terms per image, ``A(x) = A_R + kappa * A_D``; map: the
per-pixel residual ``mean_c (x - G(E(x)))^2`` (``[0, 1]`` units), smoothed by the shared
Gaussian (``sigma``).

Deviations: the paper trains the GAN and the encoder as two runs of their own lengths; here
they are two phases of one run (the boundary is ``round(gan_fraction * total_steps)``, so
changing the number of epochs on resume moves it; a kill-and-resume of the same run is
exact). The paper's networks are residual WGAN-GP networks for 64 x 64 images; here the DCGAN
layout for any power-of-two size.
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
from anomjax.methods.images import check_images, check_trained_size, to_signed
from anomjax.methods.optimization import GroupedOptimizer, Phase, Update
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.conv_ae import DCGANCritic, DCGANDecoder, DCGANEncoder, dcgan_trained_size
from anomjax.nn.fast_init import init_variables
from anomjax.nn.losses import gradient_penalty
from anomjax.scoring import to_scores
from anomjax.types import Scores


class TanhEncoder(nn.Module):
    """``[B, S, S, 3] -> [B, latent]`` in ``(-1, 1)``: a LayerNorm DCGAN encoder and tanh."""

    image_size: int
    width: int
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        z, _ = DCGANEncoder(self.image_size, self.width, self.latent, "layer", name="body")(x)
        return jnp.tanh(z)


@register
@dataclasses.dataclass(frozen=True)
class FAnoGAN(TrainedMethod):
    """f-AnoGAN (see the module docstring).

    Attributes:
      width: base width of the generator, critic and encoder.
      latent: dimension of ``z``.
      gan_fraction: share of the training steps spent on the WGAN-GP (the rest: encoder).
      n_critic: critic updates per generator update.
      gp_weight: gradient-penalty weight (WGAN-GP: 10).
      kappa: weight of the feature residual in the encoder loss and the score.
      gan_lr, encoder_lr: Adam learning rates.
      sigma: Gaussian smoothing of the residual map, in pixels.
    """

    name: ClassVar[str] = "f_anogan"

    width: int = hyper(64, low=1, high=1024)
    latent: int = hyper(128, low=1, high=4096)
    gan_fraction: float = hyper(0.5, low=0.0, high=1.0, low_open=True, high_open=True)
    n_critic: int = hyper(5, low=1, high=100)
    gp_weight: float = hyper(10.0, low=0.0)
    kappa: float = hyper(1.0, low=0.0)
    gan_lr: float = hyper(1e-4, low=0.0, high=1.0, low_open=True)
    encoder_lr: float = hyper(1e-4, low=0.0, high=1.0, low_open=True)
    sigma: float = hyper(4.0, low=0.0, high=64.0)

    def _nets(self, images: jax.Array) -> tuple[DCGANDecoder, DCGANCritic, TanhEncoder]:
        check_images(self.name, images, power_of_two=True)
        size = images.shape[1]
        return (DCGANDecoder(size, self.width), DCGANCritic(size, self.width, "layer"),
                TanhEncoder(size, self.width, self.latent))

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Generator (with BatchNorm statistics), critic and encoder (DCGAN init)."""
        gen, critic, enc = self._nets(images)
        kg, kd, ke = jax.random.split(key, 3)
        x = to_signed(jnp.asarray(images[:1]))
        g = init_variables(gen, kg, jnp.zeros((1, self.latent)), policy="dcgan")
        return {"params": {"generator": g["params"],
                           "critic": init_variables(critic, kd, x, policy="dcgan")["params"],
                           "encoder": init_variables(enc, ke, x, policy="dcgan")["params"]},
                "batch_stats": {"generator": g["batch_stats"]}}

    def optimizer(self, total_steps: int) -> GroupedOptimizer:
        """WGAN-GP phase (critic every step, generator every ``n_critic``), then encoder."""
        gan = optax.adam(self.gan_lr, b1=0.0, b2=0.9)
        boundary = max(1, round(self.gan_fraction * total_steps))
        return GroupedOptimizer(
            optimizers={"generator": gan, "critic": optax.adam(self.gan_lr, b1=0.0, b2=0.9),
                        "encoder": optax.adam(self.encoder_lr)},
            phases=(Phase((Update("critic", "critic", self.critic_loss),
                           Update("g", "generator", self.generator_loss, every=self.n_critic)),
                          until=boundary),
                    Phase((Update("encoder", "encoder", self.encoder_loss),))))

    def _generate(self, gen: DCGANDecoder, params: Any, state: State, z: jax.Array,
                  train: bool) -> tuple[jax.Array, Any]:
        variables = {"params": params, "batch_stats": state["batch_stats"]["generator"]}
        if not train:
            return gen.apply(variables, z), state["batch_stats"]["generator"]
        out, new = gen.apply(variables, z, train=True, mutable=["batch_stats"])
        return out, new["batch_stats"]

    def critic_loss(self, params: Any, state: State, images: jax.Array,
                    key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``mean D(G(z)) - mean D(x) + gp_weight * GP``."""
        gen, critic, _ = self._nets(images)
        kz, ke = jax.random.split(key)
        z = jax.random.uniform(kz, (images.shape[0], self.latent), jnp.float32, -1.0, 1.0)
        fake, g_stats = self._generate(gen, jax.lax.stop_gradient(params["generator"]), state,
                                       z, train=True)
        fake = jax.lax.stop_gradient(fake)
        real = to_signed(images)

        def d(x: jax.Array) -> jax.Array:
            return critic.apply({"params": params["critic"]}, x)[0]

        eps = jax.random.uniform(ke, (images.shape[0],), jnp.float32)
        wasserstein = jnp.mean(d(real)) - jnp.mean(d(fake))
        penalty = gradient_penalty(d, real, fake, eps)
        return -wasserstein + self.gp_weight * penalty, {
            "batch_stats": {"generator": g_stats}, "wasserstein": wasserstein,
            "gradient_penalty": penalty}

    def generator_loss(self, params: Any, state: State, images: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``-mean D(G(z))``."""
        gen, critic, _ = self._nets(images)
        z = jax.random.uniform(key, (images.shape[0], self.latent), jnp.float32, -1.0, 1.0)
        fake, g_stats = self._generate(gen, params["generator"], state, z, train=True)
        logits, _ = critic.apply({"params": jax.lax.stop_gradient(params["critic"])}, fake)
        return -jnp.mean(logits), {"batch_stats": {"generator": g_stats}}

    def _izi_f(self, params: Any, state: State,
               images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per-image ``A_R [B]``, ``A_D [B]`` and the reconstruction ``[B, S, S, 3]``."""
        gen, critic, enc = self._nets(images)
        x = to_signed(images)
        z = enc.apply({"params": params["encoder"]}, x)
        frozen = jax.lax.stop_gradient(params["generator"])
        recon, _ = self._generate(gen, frozen, state, z, train=False)
        c_vars = {"params": jax.lax.stop_gradient(params["critic"])}
        _, f_real = critic.apply(c_vars, x)
        _, f_fake = critic.apply(c_vars, recon)
        a_r = jnp.mean(jnp.square(x - recon), axis=(1, 2, 3))
        a_d = jnp.mean(jnp.square(f_real - f_fake), axis=(1, 2, 3))
        return a_r, a_d, recon

    def encoder_loss(self, params: Any, state: State, images: jax.Array,
                     key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """The izi_f loss, mean over the batch."""
        del key
        a_r, a_d, _ = self._izi_f(params, state, images)
        return jnp.mean(a_r + self.kappa * a_d), {"residual": jnp.mean(a_r),
                                                  "feature_residual": jnp.mean(a_d)}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score ``A_R + kappa * A_D``; map = smoothed squared residual."""
        check_trained_size(self.name, images,
                           dcgan_trained_size(state["params"]["critic"]["body"]))
        a_r, a_d, recon = self._izi_f(state["params"], state, images)
        residual = jnp.mean(jnp.square(to_signed(images) - recon), axis=-1) / 4.0
        return to_scores(residual, images.shape[1:3], self.sigma,
                         image_score=a_r + self.kappa * a_d)
