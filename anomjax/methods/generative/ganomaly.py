"""GANomaly (Akcay, Atapour-Abarghouei & Breckon, ACCV 2018).

An encoder-decoder-encoder generator: ``G_E`` encodes the image ``x`` (in ``[-1, 1]``) to
``z``, ``G_D`` decodes it to ``x_hat``, a second encoder ``E`` encodes ``x_hat`` to
``z_hat``; all DCGAN blocks (``anomjax.nn.conv_ae``). A DCGAN discriminator ``D`` separates
``x`` from ``x_hat``. Each step, as in the authors' code (``optimize_params``): first the
generator is updated on

    L_G = w_adv * || f(x) - f(x_hat) ||_2^2 + w_con * | x - x_hat |_1 + w_enc * || z - z_hat ||_2^2

(means over elements; ``f`` = the discriminator's features before its last layer; weights
1 / 50 / 1), then the discriminator on the binary cross-entropy of ``D(x)`` against 1 and of
``D(x_hat)`` against 0 (halved), with the ``x_hat`` of the generator before its update
(the authors' ``fake.detach()``). Both networks train in training mode (batch statistics).
Adam lr 2e-4, betas (0.5, 0.999), 15 epochs (the authors' ``niter``), width 64, latent 100,
DCGAN initialisation (drawn with NumPy, ``anomjax.nn.fast_init``).

Image score (the paper's): ``mean_k (z_k - z_hat_k)^2``. The paper is image-level; the map
here is this library's addition so that the pixel metrics run: the per-pixel residual
``mean_c |x - x_hat|`` (in ``[0, 1]`` units), smoothed by the shared Gaussian (``sigma``).

Against the authors' code (``samet-akcay/ganomaly`` ``lib/model.py``):

* ``reinit_below=1e-5`` (authors, default): when the discriminator's loss falls below it
  after its update, the discriminator's weights are drawn again (DCGAN init: N(0, 0.02)
  kernels, BatchNorm scales N(1, 0.02), biases 0; their ``reinit_d``), its running
  statistics and Adam state kept, as theirs are. ``0`` switches it off.
* ``test_statistics``: their ``test()`` never switches the generator to ``eval()``, so
  BatchNorm normalises with the statistics of the scored batch (``"batch"``, a named
  option). The default is ``"running"`` (the running statistics): an image's score is its
  own, whatever else is in its batch, which the library's scoring needs (it zero-pads a short
  last batch to one compiled shape; under ``"batch"`` the padding would enter the
  statistics, so score with a batch size that divides the test set). Measured on the tiny
  trained fabric toy of ``tests/methods/test_recon_generative.py`` (32 px, width 8, 30
  epochs, one trained state, a 6-image test batch): pixel AUROC 0.671 with ``"running"``,
  0.451 with ``"batch"``.

Deviation: scores are not min-max normalised over the test set (the metrics are invariant
to it). Parity with the authors' code: ``tests/parity/test_parity_ganomaly.py``.
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
from anomjax.nn.losses import l1_loss, l2_loss
from anomjax.precision import scored_at_full_precision
from anomjax.scoring import to_scores
from anomjax.types import Scores


class GANomalyGenerator(nn.Module):
    """``x [B, S, S, 3] -> (x_hat, z [B, latent], z_hat [B, latent])``."""

    image_size: int
    width: int
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        z, _ = DCGANEncoder(self.image_size, self.width, self.latent, name="encoder1")(x, train)
        x_hat = DCGANDecoder(self.image_size, self.width, x.shape[-1], name="decoder")(z, train)
        z_hat, _ = DCGANEncoder(self.image_size, self.width, self.latent,
                                name="encoder2")(x_hat, train)
        return x_hat, z, z_hat


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against a constant ``target``."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def discriminate(disc: DCGANCritic, params: Any, stats: Any,
                 x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """``((logits, features), updated batch stats)`` of a DCGAN discriminator in training
    mode (batch statistics) on ``x [B, H, W, C]``."""
    out, new = disc.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
    return out, new["batch_stats"]


def discriminator_bce(disc: DCGANCritic, params: Any, stats: Any, real: jax.Array,
                      fake: jax.Array) -> tuple[jax.Array, Any]:
    """``BCE(D(real), 1) + BCE(D(fake), 0)`` (each a mean) of a DCGAN discriminator in training
    mode on ``real`` then ``fake`` ``[B, H, W, C]``, and its updated batch stats."""
    (real_logit, _), stats = discriminate(disc, params, stats, real)
    (fake_logit, _), stats = discriminate(disc, params, stats, fake)
    return bce_with_logits(real_logit, 1.0) + bce_with_logits(fake_logit, 0.0), stats


def dcgan_redraw(params: Any, key: jax.Array) -> Any:
    """``params`` drawn again with the DCGAN initialisation (traceable): kernels
    N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))

    def draw(path: tuple, leaf: jax.Array, k: jax.Array) -> jax.Array:
        name = path[-1].key
        noise = 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)
        return {"kernel": noise, "scale": 1.0 + noise}.get(name, jnp.zeros_like(leaf))

    return jax.tree_util.tree_unflatten(
        treedef, [draw(p, leaf, k) for (p, leaf), k in zip(leaves, keys, strict=True)])


@register
@dataclasses.dataclass(frozen=True)
class GANomaly(TrainedMethod):
    """GANomaly (see the module docstring).

    Attributes:
      width: DCGAN base width (authors' ``ngf = ndf``).
      latent: code size (authors' ``nz``).
      learning_rate, beta1: Adam of both networks.
      w_adv, w_con, w_enc: generator loss weights.
      test_statistics: BatchNorm statistics at test time, ``"running"`` or ``"batch"``
        (authors; scores then depend on the batch).
      reinit_below: re-initialise the discriminator when its loss falls below this (authors:
        1e-5; 0: never).
      sigma: Gaussian smoothing of the residual map, in pixels.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "ganomaly"
    default_epochs: ClassVar[int] = 15  # authors' niter

    width: int = hyper(64, low=1, high=1024)
    latent: int = hyper(100, low=1, high=4096)
    learning_rate: float = hyper(2e-4, low=0.0, high=1.0, low_open=True)
    beta1: float = hyper(0.5, low=0.0, high=1.0, high_open=True)
    w_adv: float = hyper(1.0, low=0.0)
    w_con: float = hyper(50.0, low=0.0)
    w_enc: float = hyper(1.0, low=0.0)
    test_statistics: str = hyper("running", choices=("running", "batch"))
    reinit_below: float = hyper(1e-5, low=0.0)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _nets(self, images: jax.Array) -> tuple[GANomalyGenerator, DCGANCritic]:
        check_images(self.name, images, power_of_two=True)
        size = images.shape[1]
        return (GANomalyGenerator(size, self.width, self.latent),
                DCGANCritic(size, self.width))

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Generator and discriminator params and BatchNorm statistics."""
        gen, disc = self._nets(images)
        kg, kd = jax.random.split(key)
        x = to_signed(jnp.asarray(images[:1]))
        g = init_variables(gen, kg, x, policy="dcgan")
        d = init_variables(disc, kd, x, policy="dcgan")
        return {"params": {"generator": g["params"], "discriminator": d["params"]},
                "batch_stats": {"generator": g["batch_stats"],
                                "discriminator": d["batch_stats"]}}

    def optimizer(self, total_steps: int) -> GroupedOptimizer:
        """Adam for each network; generator update, then discriminator update."""
        del total_steps
        adam = optax.adam(self.learning_rate, b1=self.beta1, b2=0.999)
        return GroupedOptimizer(
            optimizers={"generator": adam, "discriminator": adam},
            phases=(Phase((Update("g", "generator", self.generator_loss),
                           Update("d", "discriminator", self.discriminator_loss,
                                  after=self._reinit_collapsed))),))

    def _reinit_collapsed(self, params: Any, loss: jax.Array, key: jax.Array) -> Any:
        """The discriminator's params, drawn again (DCGAN init) when ``loss < reinit_below``."""
        return jax.lax.cond(loss < self.reinit_below, lambda: dcgan_redraw(params, key),
                            lambda: params)

    def generator_loss(self, params: Any, state: State, images: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``w_adv L_adv + w_con L_con + w_enc L_enc``; hands ``x_hat`` to the D update."""
        del key
        gen, disc = self._nets(images)
        stats = state["batch_stats"]
        x = to_signed(images)
        (x_hat, z, z_hat), g_new = gen.apply(
            {"params": params["generator"], "batch_stats": stats["generator"]}, x, train=True,
            mutable=["batch_stats"])
        d_params = jax.lax.stop_gradient(params["discriminator"])
        (_, f_real), d_stats = discriminate(disc, d_params, stats["discriminator"], x)
        (_, f_fake), d_stats = discriminate(disc, d_params, d_stats, x_hat)
        adv = l2_loss(f_real, f_fake)
        con = l1_loss(x, x_hat)
        enc = l2_loss(z, z_hat)
        loss = self.w_adv * adv + self.w_con * con + self.w_enc * enc
        return loss, {"batch_stats": {"generator": g_new["batch_stats"],
                                      "discriminator": d_stats},
                      "loss_adv": adv, "loss_con": con, "loss_enc": enc,
                      "carry": {"fake": x_hat}}

    def discriminator_loss(self, params: Any, state: State, images: jax.Array,
                           key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``(BCE(D(x), 1) + BCE(D(x_hat), 0)) / 2`` with the handed-on ``x_hat``."""
        del key
        _, disc = self._nets(images)
        stats = state["batch_stats"]
        loss, d_stats = discriminator_bce(disc, params["discriminator"], stats["discriminator"],
                                          to_signed(images), state["carry"]["fake"])
        return 0.5 * loss, {"batch_stats": {**stats, "discriminator": d_stats}}

    @scored_at_full_precision
    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score = latent distance; map = smoothed residual (see the module doc)."""
        gen, _ = self._nets(images)
        check_trained_size(self.name, images,
                           dcgan_trained_size(state["params"]["generator"]["encoder1"]))
        variables = {"params": state["params"]["generator"],
                     "batch_stats": state["batch_stats"]["generator"]}
        if self.test_statistics == "batch":
            (x_hat, z, z_hat), _ = gen.apply(variables, to_signed(images), train=True,
                                             mutable=["batch_stats"])
        else:
            x_hat, z, z_hat = gen.apply(variables, to_signed(images), train=False)
        residual = jnp.mean(jnp.abs(to_signed(images) - x_hat), axis=-1) / 2.0
        image = jnp.mean(jnp.square(z - z_hat), axis=-1)
        return to_scores(residual, images.shape[1:3], self.sigma, sigma_side=self.sigma_side,
                         image_score=image)
