"""AnoGAN (Schlegl, Seeböck, Waldstein, Schmidt-Erfurth & Langs, IPMI 2017).

A DCGAN (``anomjax.nn.conv_ae``: generator ``G`` from ``z ~ U(-1, 1)^latent`` to images in
``[-1, 1]``, discriminator ``D`` with BatchNorm) is trained on normal images: each step
updates ``D`` on the binary cross-entropy of real images against 1 and generated ones
against 0, then ``G`` on the non-saturating loss (``D(G(z))`` against 1), with the same
``z``; Adam lr 2e-4, beta1 0.5 (DCGAN's settings).

At test time every image gets its own latent search, jitted and batched (``lax.fori_loop``
over ``search_steps`` Adam steps on ``z [B, latent]``, from ``U(-1, 1)`` draws of a fixed
key per row), minimising the paper's loss

    A(z) = (1 - lambda) * sum |x - G(z)| + lambda * sum |f(x) - f(G(z))|,  lambda = 0.1,

with ``f`` the discriminator's features before its last layer (feature matching; both
networks with running BatchNorm statistics). The image score is ``A`` at the last step; the
map is the residual ``mean_c |x - G(z*)|`` (``[0, 1]`` units), smoothed by the shared Gaussian
(``sigma``).

Paper settings kept: lambda 0.1, 500 search steps (``search_steps``; lower it for speed),
feature-matching discrimination loss. Deviations: the paper updates ``z`` by plain
backpropagation at an unstated rate; Adam with ``search_lr = 0.05`` is used here; the
networks are the generic DCGAN for power-of-two image sizes (width ``width``); one
generator update per discriminator update (the DCGAN-TensorFlow code the authors' work built
on updates the generator twice).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from anomjax.methods.base import State, register
from anomjax.methods.generative.ganomaly import bce_with_logits, discriminate, discriminator_bce
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images, check_trained_size, to_signed
from anomjax.methods.optimization import GroupedOptimizer, Phase, Update
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.conv_ae import DCGANCritic, DCGANDecoder, dcgan_trained_size
from anomjax.nn.fast_init import init_variables
from anomjax.precision import scored_at_full_precision
from anomjax.scoring import to_scores
from anomjax.types import Scores


@register
@dataclasses.dataclass(frozen=True)
class AnoGAN(TrainedMethod):
    """AnoGAN (see the module docstring).

    Attributes:
      width: DCGAN base width.
      latent: dimension of ``z``.
      learning_rate, beta1: Adam of both networks.
      lam: weight of the discrimination loss in the latent search (paper: 0.1).
      search_steps, search_lr: the test-time latent search.
      search_seed: seed of the starting ``z`` of the search.
      sigma: Gaussian smoothing of the residual map, in pixels.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "anogan"

    width: int = hyper(64, low=1, high=1024)
    latent: int = hyper(100, low=1, high=4096)
    learning_rate: float = hyper(2e-4, low=0.0, high=1.0, low_open=True)
    beta1: float = hyper(0.5, low=0.0, high=1.0, high_open=True)
    lam: float = hyper(0.1, low=0.0, high=1.0)
    search_steps: int = hyper(500, low=1, high=100_000)
    search_lr: float = hyper(0.05, low=0.0, high=10.0, low_open=True)
    search_seed: int = hyper(0, low=0)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _nets(self, images: jax.Array) -> tuple[DCGANDecoder, DCGANCritic]:
        check_images(self.name, images, power_of_two=True)
        size = images.shape[1]
        return DCGANDecoder(size, self.width), DCGANCritic(size, self.width)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Generator and discriminator params and BatchNorm statistics (DCGAN init)."""
        gen, disc = self._nets(images)
        kg, kd = jax.random.split(key)
        g = init_variables(gen, kg, jnp.zeros((1, self.latent)), policy="dcgan")
        d = init_variables(disc, kd, to_signed(jnp.asarray(images[:1])), policy="dcgan")
        return {"params": {"generator": g["params"], "discriminator": d["params"]},
                "batch_stats": {"generator": g["batch_stats"],
                                "discriminator": d["batch_stats"]}}

    def optimizer(self, total_steps: int) -> GroupedOptimizer:
        """Adam for each network; discriminator update, then generator update."""
        del total_steps
        adam = optax.adam(self.learning_rate, b1=self.beta1)
        return GroupedOptimizer(
            optimizers={"generator": adam, "discriminator": adam},
            phases=(Phase((Update("d", "discriminator", self.discriminator_loss),
                           Update("g", "generator", self.generator_loss))),))

    def _generate(self, gen: DCGANDecoder, params: Any, stats: Any, z: jax.Array,
                  train: bool) -> tuple[jax.Array, Any]:
        if not train:
            return gen.apply({"params": params, "batch_stats": stats}, z), stats
        out, new = gen.apply({"params": params, "batch_stats": stats}, z, train=True,
                             mutable=["batch_stats"])
        return out, new["batch_stats"]

    def discriminator_loss(self, params: Any, state: State, images: jax.Array,
                           key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """:meth:`discriminator_objective` with ``z ~ U(-1, 1)``."""
        return self.discriminator_objective(
            params, state, images,
            jax.random.uniform(key, (images.shape[0], self.latent), jnp.float32, -1.0, 1.0))

    def discriminator_objective(self, params: Any, state: State, images: jax.Array,
                                z: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """BCE of real images against 1 and ``G(z)`` (``z [B, latent]``) against 0; hands ``z``
        on to the generator's update."""
        gen, disc = self._nets(images)
        stats = state["batch_stats"]
        fake, g_stats = self._generate(gen, jax.lax.stop_gradient(params["generator"]),
                                       stats["generator"], z, train=True)
        loss, d_stats = discriminator_bce(disc, params["discriminator"], stats["discriminator"],
                                          to_signed(images), jax.lax.stop_gradient(fake))
        return loss, {"batch_stats": {"generator": g_stats, "discriminator": d_stats},
                      "carry": {"z": z}}

    def generator_loss(self, params: Any, state: State, images: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """Non-saturating generator loss with the discriminator step's ``z``."""
        del key
        gen, disc = self._nets(images)
        stats = state["batch_stats"]
        fake, g_stats = self._generate(gen, params["generator"], stats["generator"],
                                       state["carry"]["z"], train=True)
        (fake_logit, _), d_stats = discriminate(
            disc, jax.lax.stop_gradient(params["discriminator"]), stats["discriminator"], fake)
        return bce_with_logits(fake_logit, 1.0), {
            "batch_stats": {"generator": g_stats, "discriminator": d_stats}}

    def search(self, state: State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The latent search: ``(G(z*) [B, S, S, 3] in [-1, 1], A(z*) [B])``."""
        start = jax.random.PRNGKey(self.search_seed)  # row i starts from fold_in(start, i)
        z0 = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(start, i), (self.latent,),
                                                   jnp.float32, -1.0, 1.0))(
            jnp.arange(images.shape[0]))
        return self.search_from(state, images, z0)

    def search_from(self, state: State, images: jax.Array,
                    z0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """:meth:`search` from the starting codes ``z0 [B, latent]``."""
        gen, disc = self._nets(images)
        check_trained_size(self.name, images,
                           dcgan_trained_size(state["params"]["discriminator"]["body"]))
        g_vars = {"params": state["params"]["generator"],
                  "batch_stats": state["batch_stats"]["generator"]}
        d_vars = {"params": state["params"]["discriminator"],
                  "batch_stats": state["batch_stats"]["discriminator"]}
        x = to_signed(images)
        _, f_real = disc.apply(d_vars, x)

        def objective(z: jax.Array) -> tuple[jax.Array, jax.Array]:
            fake = gen.apply(g_vars, z)
            _, f_fake = disc.apply(d_vars, fake)
            residual = jnp.sum(jnp.abs(x - fake), axis=(1, 2, 3))
            discrimination = jnp.sum(jnp.abs(f_real - f_fake), axis=(1, 2, 3))
            per_image = (1 - self.lam) * residual + self.lam * discrimination
            return jnp.sum(per_image), (per_image, fake)

        opt = optax.adam(self.search_lr)

        def body(_: int, carry: tuple) -> tuple:
            z, opt_state = carry
            grads, _ = jax.grad(objective, has_aux=True)(z)
            updates, opt_state = opt.update(grads, opt_state, z)
            return optax.apply_updates(z, updates), opt_state

        z, _ = jax.lax.fori_loop(0, self.search_steps, body, (z0, opt.init(z0)))
        _, (score, fake) = objective(z)
        return fake, score

    @scored_at_full_precision
    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score = ``A(z*)``; map = smoothed residual ``mean_c |x - G(z*)|``."""
        fake, score = self.search(state, images)
        residual = jnp.mean(jnp.abs(to_signed(images) - fake), axis=-1) / 2.0
        return to_scores(residual, images.shape[1:3], self.sigma, sigma_side=self.sigma_side,
                         image_score=score)
