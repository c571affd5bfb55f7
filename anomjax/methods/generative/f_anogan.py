"""f-AnoGAN (Schlegl, Seeböck, Waldstein, Langs & Schmidt-Erfurth, Medical Image Analysis
2019): a WGAN-GP, then an encoder trained into its latent space (izi_f).

Defaults are the authors' (tSchlegl/f-AnoGAN: ``wgangp_64x64.py``, ``z_encoding_izif.py``,
``anomaly_detection.py``).

Phase 1 (the first ``gan_fraction`` of the training steps): a Wasserstein GAN with gradient
penalty (Gulrajani et al. 2017). The critic ``D`` (DCGAN layout with LayerNorm over
``(H, W, C)``, the authors' ``Layernorm([1, 2, 3])``, which the penalty requires instead of
BatchNorm) minimises ``mean D(G(z)) - mean D(x) + 10 * GP`` every step; the generator ``G``
(DCGAN, BatchNorm) minimises ``-mean D(G(z))`` every ``n_critic = 5``-th step
(``Update.every``); ``z ~ N(0, I)`` (their ``RAND_SAMPLING='normal'``; ``latent_sampling=
"uniform"``: ``U(-1, 1)``); Adam lr 1e-4, betas (0, 0.9). As in their graph, ``G``'s BatchNorm
running statistics move only in ``G``'s updates (not when the critic samples fakes).

Phase 2 (the remaining steps): ``G`` and ``D`` frozen (``G`` on its running BatchNorm
statistics), an encoder ``E`` (the DCGAN encoder, BatchNorm with batch statistics in
training and running ones at test as theirs; ``encoder_norm="layer"``: LayerNorm; ``tanh``
output, their default ``Z_REG_TYPE='tanh_fc'``, "paper version"; ``encoder_output="linear"``:
their unconstrained variant, Appendix A.2) is trained with the paper's izi_f loss

    L = 1/n ||x - G(E(x))||^2 + kappa / n_d ||f(x) - f(G(E(x)))||^2,   kappa = 1,

``f`` the critic's features before its last layer, by TensorFlow 1's RMSProp at lr 5e-5
(their ``RMSPropOptimizer``: decay 0.9, no momentum, epsilon 1e-10 inside the square root,
mean square initialised to 1; ``encoder_optimizer="adam"``: Adam, betas (0.9, 0.999)).

Score (the paper's, ``anomaly_detection.py``): the same two terms per image,
``A(x) = A_R + kappa * A_D``; map (this library's addition): the per-pixel residual
``mean_c (x - G(E(x)))^2`` (``[0, 1]`` units), smoothed by the shared Gaussian (``sigma``).

Deviations: the paper trains the GAN and the encoder as two runs of their own lengths; here
they are two phases of one run. The boundary is ``round(gan_fraction * total_steps)``; the
checkpoint records the run's budget and a resume with another budget, which would move the
boundary, is refused (``anomjax.train.loop.check_schedule``). The authors' networks are
residual WGAN-GP networks for 64 x 64 grey images with TensorFlow's BatchNorm constants
(momentum 0.99, epsilon 1e-3); here the DCGAN layout for any power-of-two size with
PyTorch's (0.1, 1e-5). Parity with the authors' equations: ``tests/parity/test_parity_f_anogan.py``.
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
from anomjax.precision import scored_at_full_precision
from anomjax.scoring import to_scores
from anomjax.types import Scores


class LatentEncoder(nn.Module):
    """``[B, S, S, 3] -> [B, latent]``: a DCGAN encoder (``norm``), then ``tanh`` or nothing."""

    image_size: int
    width: int
    latent: int
    norm: str = "batch"
    output: str = "tanh"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        z, _ = DCGANEncoder(self.image_size, self.width, self.latent, self.norm,
                            name="body")(x, train)
        return jnp.tanh(z) if self.output == "tanh" else z


def tf1_rmsprop(learning_rate: float) -> optax.GradientTransformation:
    """TensorFlow 1's ``RMSPropOptimizer(learning_rate)`` with its defaults: ``ms <- 0.9 ms +
    0.1 g^2`` from ``ms = 1``, step ``-lr g / sqrt(ms + 1e-10)``."""
    return optax.rmsprop(learning_rate, decay=0.9, eps=1e-10, initial_scale=1.0,
                         eps_in_sqrt=True)


@register
@dataclasses.dataclass(frozen=True)
class FAnoGAN(TrainedMethod):
    """f-AnoGAN (see the module docstring).

    Attributes:
      width: base width of the generator, critic and encoder.
      latent: dimension of ``z``.
      latent_sampling: prior of ``z``, ``"normal"`` (authors) or ``"uniform"`` ``U(-1, 1)``.
      gan_fraction: share of the training steps spent on the WGAN-GP (the rest: encoder).
      n_critic: critic updates per generator update.
      gp_weight: gradient-penalty weight (WGAN-GP: 10).
      kappa: weight of the feature residual in the encoder loss and the score.
      gan_lr: Adam learning rate of the generator and the critic.
      encoder_optimizer: ``"rmsprop"`` (authors: TensorFlow 1's) or ``"adam"``.
      encoder_lr: learning rate of the encoder (authors: 5e-5).
      encoder_norm: ``"batch"`` (authors) or ``"layer"``.
      encoder_output: ``"tanh"`` (authors' default) or ``"linear"``.
      sigma: Gaussian smoothing of the residual map, in pixels.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "f_anogan"

    width: int = hyper(64, low=1, high=1024)
    latent: int = hyper(128, low=1, high=4096)
    latent_sampling: str = hyper("normal", choices=("normal", "uniform"))
    gan_fraction: float = hyper(0.5, low=0.0, high=1.0, low_open=True, high_open=True)
    n_critic: int = hyper(5, low=1, high=100)
    gp_weight: float = hyper(10.0, low=0.0)
    kappa: float = hyper(1.0, low=0.0)
    gan_lr: float = hyper(1e-4, low=0.0, high=1.0, low_open=True)
    encoder_optimizer: str = hyper("rmsprop", choices=("rmsprop", "adam"))
    encoder_lr: float = hyper(5e-5, low=0.0, high=1.0, low_open=True)
    encoder_norm: str = hyper("batch", choices=("batch", "layer"))
    encoder_output: str = hyper("tanh", choices=("tanh", "linear"))
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _nets(self, images: jax.Array) -> tuple[DCGANDecoder, DCGANCritic, LatentEncoder]:
        check_images(self.name, images, power_of_two=True)
        size = images.shape[1]
        return (DCGANDecoder(size, self.width), DCGANCritic(size, self.width, "layer"),
                LatentEncoder(size, self.width, self.latent, self.encoder_norm,
                              self.encoder_output))

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Generator, critic and encoder (DCGAN init) and the BatchNorm statistics."""
        gen, critic, enc = self._nets(images)
        kg, kd, ke = jax.random.split(key, 3)
        x = to_signed(jnp.asarray(images[:1]))
        g = init_variables(gen, kg, jnp.zeros((1, self.latent)), policy="dcgan")
        e = init_variables(enc, ke, x, policy="dcgan")
        stats = {"generator": g["batch_stats"]}
        if "batch_stats" in e:
            stats["encoder"] = e["batch_stats"]
        return {"params": {"generator": g["params"],
                           "critic": init_variables(critic, kd, x, policy="dcgan")["params"],
                           "encoder": e["params"]},
                "batch_stats": stats}

    def optimizer(self, total_steps: int) -> GroupedOptimizer:
        """WGAN-GP phase (critic every step, generator every ``n_critic``), then encoder."""
        boundary = max(1, round(self.gan_fraction * total_steps))
        encoder = (tf1_rmsprop(self.encoder_lr) if self.encoder_optimizer == "rmsprop"
                   else optax.adam(self.encoder_lr))
        return GroupedOptimizer(
            optimizers={"generator": optax.adam(self.gan_lr, b1=0.0, b2=0.9),
                        "critic": optax.adam(self.gan_lr, b1=0.0, b2=0.9),
                        "encoder": encoder},
            phases=(Phase((Update("critic", "critic", self.critic_loss),
                           Update("g", "generator", self.generator_loss, every=self.n_critic)),
                          until=boundary),
                    Phase((Update("encoder", "encoder", self.encoder_loss),))))

    def sample_latent(self, key: jax.Array, count: int) -> jax.Array:
        """``[count, latent]`` draws of the prior (``latent_sampling``)."""
        if self.latent_sampling == "normal":
            return jax.random.normal(key, (count, self.latent), jnp.float32)
        return jax.random.uniform(key, (count, self.latent), jnp.float32, -1.0, 1.0)

    def _generate(self, gen: DCGANDecoder, params: Any, state: State, z: jax.Array,
                  train: bool) -> tuple[jax.Array, Any]:
        variables = {"params": params, "batch_stats": state["batch_stats"]["generator"]}
        if not train:
            return gen.apply(variables, z), state["batch_stats"]["generator"]
        out, new = gen.apply(variables, z, train=True, mutable=["batch_stats"])
        return out, new["batch_stats"]

    def critic_loss(self, params: Any, state: State, images: jax.Array,
                    key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """:meth:`critic_objective` with ``z`` from the prior and ``eps ~ U[0, 1]``."""
        kz, ke = jax.random.split(key)
        return self.critic_objective(params, state, images, self.sample_latent(kz, len(images)),
                                     jax.random.uniform(ke, (len(images),), jnp.float32))

    def critic_objective(self, params: Any, state: State, images: jax.Array, z: jax.Array,
                         eps: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``mean D(G(z)) - mean D(x) + gp_weight * GP`` for ``z [B, latent]``, the penalty at
        ``eps x + (1 - eps) G(z)`` (``eps [B]``); ``G`` in training mode, its running
        statistics left as they are (the authors update them in ``G``'s steps only)."""
        gen, critic, _ = self._nets(images)
        fake, _ = self._generate(gen, jax.lax.stop_gradient(params["generator"]), state, z,
                                 train=True)
        fake = jax.lax.stop_gradient(fake)
        real = to_signed(images)

        def d(x: jax.Array) -> jax.Array:
            return critic.apply({"params": params["critic"]}, x)[0]

        wasserstein = jnp.mean(d(real)) - jnp.mean(d(fake))
        penalty = gradient_penalty(d, real, fake, eps)
        return -wasserstein + self.gp_weight * penalty, {
            "wasserstein": wasserstein, "gradient_penalty": penalty}

    def generator_loss(self, params: Any, state: State, images: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """:meth:`generator_objective` with ``z`` from the prior."""
        return self.generator_objective(params, state, images,
                                        self.sample_latent(key, len(images)))

    def generator_objective(self, params: Any, state: State, images: jax.Array,
                            z: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``-mean D(G(z))`` for ``z [B, latent]``; updates ``G``'s running statistics."""
        gen, critic, _ = self._nets(images)
        fake, g_stats = self._generate(gen, params["generator"], state, z, train=True)
        logits, _ = critic.apply({"params": jax.lax.stop_gradient(params["critic"])}, fake)
        return -jnp.mean(logits), {"batch_stats": {**state["batch_stats"],
                                                   "generator": g_stats}}

    def _izi_f(self, params: Any, state: State, images: jax.Array,
               train: bool) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
        """Per-image ``A_R [B]``, ``A_D [B]``, the reconstruction ``[B, S, S, 3]`` and the
        batch statistics (the encoder's updated when ``train`` and it has BatchNorm)."""
        gen, critic, enc = self._nets(images)
        x = to_signed(images)
        stats = state["batch_stats"]
        e_vars = {"params": params["encoder"]}
        if "encoder" in stats:
            e_vars["batch_stats"] = stats["encoder"]
        if train and "encoder" in stats:
            z, new = enc.apply(e_vars, x, train=True, mutable=["batch_stats"])
            stats = {**stats, "encoder": new["batch_stats"]}
        else:
            z = enc.apply(e_vars, x, train=train)
        frozen = jax.lax.stop_gradient(params["generator"])
        recon, _ = self._generate(gen, frozen, state, z, train=False)
        c_vars = {"params": jax.lax.stop_gradient(params["critic"])}
        _, f_real = critic.apply(c_vars, x)
        _, f_fake = critic.apply(c_vars, recon)
        a_r = jnp.mean(jnp.square(x - recon), axis=(1, 2, 3))
        a_d = jnp.mean(jnp.square(f_real - f_fake), axis=(1, 2, 3))
        return a_r, a_d, recon, stats

    def encoder_loss(self, params: Any, state: State, images: jax.Array,
                     key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """The izi_f loss, mean over the batch (encoder in training mode)."""
        del key
        a_r, a_d, _, stats = self._izi_f(params, state, images, train=True)
        return jnp.mean(a_r + self.kappa * a_d), {"batch_stats": stats,
                                                  "residual": jnp.mean(a_r),
                                                  "feature_residual": jnp.mean(a_d)}

    @scored_at_full_precision
    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score ``A_R + kappa * A_D``; map = smoothed squared residual."""
        check_trained_size(self.name, images,
                           dcgan_trained_size(state["params"]["critic"]["body"]))
        a_r, a_d, recon, _ = self._izi_f(state["params"], state, images, train=False)
        residual = jnp.mean(jnp.square(to_signed(images) - recon), axis=-1) / 4.0
        return to_scores(residual, images.shape[1:3], self.sigma, sigma_side=self.sigma_side,
                         image_score=a_r + self.kappa * a_d)
