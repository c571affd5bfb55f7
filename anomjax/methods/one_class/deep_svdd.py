"""Deep SVDD: deep support vector data description (Ruff et al., ICML 2018).

A bias-free CNN ``phi`` maps an image to ``rep_dim`` features and is trained to pull the
features of normal images towards a fixed centre ``c``:

* one-class: ``mean_i || phi(x_i) - c ||^2``;
* soft-boundary: ``R^2 + 1/nu mean_i max(0, || phi(x_i) - c ||^2 - R^2)``, with the radius
  ``R`` set after every step, once ``warmup_steps`` have passed, to the ``1 - nu`` quantile of
  the batch's distances (the code's ``get_radius`` in the batch loop).

As in ``lukasruff/Deep-SVDD-PyTorch`` (its CIFAR-10 LeNet, widened to the image size here):
``5x5`` convolutions without bias, BatchNorm without affine parameters (eps 1e-4), leaky ReLU
(slope 0.01), 2x2 max pooling, a bias-free linear layer to ``rep_dim = 128``; every bias is
absent so that the trivial constant solution is not available. The centre comes from an
autoencoder pretraining phase: a decoder mirroring the encoder (nearest 2x upsampling, bias-free
``5x5`` convolutions, sigmoid output) is trained with the code's reconstruction loss (squared
error summed over each image, averaged over the batch), then ``c`` is the mean of the
pretrained encoder's features (eval mode) over the training images, with coordinates of
magnitude below ``eps = 0.1`` pushed to ``+-eps``. Adam at 1e-4 with L2 weight decay 1e-6
for both phases.

Pretraining runs inside ``init`` (the training engine has one optimiser per run): the engine
gives ``init`` every training image (``init_on_all_images``) and ``pretrain_steps`` Adam steps
on random batches of ``pretrain_batch`` images are taken there. A resumed run repeats this
pretraining and then overwrites it with the checkpoint. The radius and a step counter are
carried in ``batch_stats`` (updated by the loss, not by the optimiser).

Test: the image score is ``|| phi(x) - c ||^2`` (minus ``R^2`` for soft-boundary). Deep SVDD
does not localise; the map here is the magnitude of the score's gradient with respect to the
input pixels (summed over channels), smoothed with a Gaussian of ``sigma``, a saliency map
that is not in the paper. Deviations: the code's learning-rate milestone is not used
(constant rate); ``default_epochs = 150`` is our choice; the widths and depth are set for
64-256 px images (``widths``, one pooling each; the paper's networks are for 28-32 px). The
decoder lifts the features with a bias-free linear layer to the coarsest grid and upsamples
before each convolution, where the code's LeNet autoencoders normalise the features (an
affine-free BatchNorm1d), reshape them to ``rep_dim / (h w)`` channels and convolve
(transposed, stride 1) before each upsampling: the reshape needs ``rep_dim`` to be a multiple
of the coarsest grid, which 128 is not at 256 px. The soft-boundary warm-up counts steps
(``warmup_steps``) where the code counts 10 epochs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.precision import full_precision
from anomjax.scoring import gaussian_blur
from anomjax.types import Scores


def _bn() -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-4, use_bias=False,
                        use_scale=False)


class Encoder(nn.Module):
    """``[B, H, W, 3] -> [B, rep_dim]``: per width a bias-free ``5x5`` conv, affine-free BN,
    leaky ReLU and 2x2 max pooling; then a bias-free linear layer."""

    widths: tuple[int, ...]
    rep_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for w in self.widths:
            x = nn.Conv(w, (5, 5), padding=2, use_bias=False)(x)
            x = nn.max_pool(nn.leaky_relu(_bn()(x), 0.01), (2, 2), strides=(2, 2))
        return nn.Dense(self.rep_dim, use_bias=False)(x.reshape(x.shape[0], -1))


class Decoder(nn.Module):
    """``[B, rep_dim] -> [B, H, W, 3]`` in ``(0, 1)``, mirroring :class:`Encoder`."""

    widths: tuple[int, ...]
    size: tuple[int, int]

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        n = len(self.widths)
        h, w = self.size[0] >> n, self.size[1] >> n
        x = nn.Dense(h * w * self.widths[-1], use_bias=False)(z)
        x = nn.leaky_relu(_bn()(x.reshape(z.shape[0], h, w, self.widths[-1])), 0.01)
        for width in reversed(self.widths):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = nn.Conv(width, (5, 5), padding=2, use_bias=False)(x)
            x = nn.leaky_relu(_bn()(x), 0.01)
        return nn.sigmoid(nn.Conv(3, (5, 5), padding=2, use_bias=False)(x))


def fix_centre(c: jax.Array, eps: float = 0.1) -> jax.Array:
    """Coordinates of ``c`` with ``|c_j| < eps`` moved to ``-eps`` (negative) or ``+eps``
    (positive; exactly zero ones too here, the code leaves those at 0)."""
    return jnp.where((jnp.abs(c) < eps) & (c < 0), -eps, jnp.where(jnp.abs(c) < eps, eps, c))


@register
@dataclasses.dataclass(frozen=True)
class DeepSVDD(TrainedMethod):
    """Deep SVDD, one-class or soft-boundary (see the module docstring).

    Attributes:
      objective: ``"one-class"`` or ``"soft-boundary"``.
      nu: soft-boundary's trade-off (fraction of outliers allowed).
      widths, rep_dim: the encoder's convolution widths (one pooling each) and feature size.
      learning_rate, weight_decay: Adam with L2 decay (both phases).
      pretrain_steps, pretrain_batch: the autoencoder pretraining in ``init``.
      warmup_steps: soft-boundary steps before the radius is first set.
      sigma: smoothing of the input-gradient map.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "deep_svdd"
    default_epochs: ClassVar[int] = 150
    init_on_all_images: ClassVar[bool] = True

    objective: str = hyper("one-class", choices=("one-class", "soft-boundary"))
    nu: float = hyper(0.1, low=0.0, high=1.0, low_open=True)
    widths: tuple[int, ...] = (32, 64, 128, 128)
    rep_dim: int = hyper(128, low=1)
    learning_rate: float = hyper(1e-4, low=0.0, low_open=True)
    weight_decay: float = hyper(1e-6, low=0.0)
    pretrain_steps: int = hyper(1000, low=0)
    pretrain_batch: int = hyper(32, low=1)
    warmup_steps: int = hyper(100, low=0)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _check(self, images: Any) -> None:
        check_images(self.name, images, multiple=2 ** len(self.widths))

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam with coupled L2 weight decay (PyTorch ``Adam(weight_decay=...)``)."""
        del total_steps
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.adam(self.learning_rate))

    def _encode(self, params: Any, stats: Any, x: jax.Array, train: bool) -> tuple[jax.Array, Any]:
        net = Encoder(tuple(self.widths), self.rep_dim)
        variables = {"params": params, "batch_stats": stats}
        if not train:
            return net.apply(variables, x), stats
        out, new = apply_with(net, variables, x, interceptors=[batch_norm_in_train_mode(0.9)],
                              mutable=["batch_stats"])
        return out, new["batch_stats"]

    def pretrain(self, key: jax.Array, images: np.ndarray) -> tuple[Any, Any]:
        """Autoencoder pretraining on ``images [N, H, W, 3]``: ``(encoder params, encoder
        batch_stats, reconstruction loss of every step [pretrain_steps])``."""
        size = tuple(images.shape[1:3])
        enc, dec = Encoder(tuple(self.widths), self.rep_dim), Decoder(tuple(self.widths), size)
        k_e, k_d, k_data = jax.random.split(key, 3)
        x0 = jnp.zeros((2, *size, 3), jnp.float32)
        ve = enc.init(k_e, x0)
        vd = dec.init(k_d, enc.apply(ve, x0))
        params = {"enc": ve["params"], "dec": vd["params"]}
        stats = {"enc": ve["batch_stats"], "dec": vd["batch_stats"]}
        opt = self.optimizer(self.pretrain_steps)
        train = [batch_norm_in_train_mode(0.9)]

        def loss_fn(p: Any, s: Any, x: jax.Array) -> tuple[jax.Array, Any]:
            z, ns_e = apply_with(enc, {"params": p["enc"], "batch_stats": s["enc"]}, x,
                                 interceptors=train, mutable=["batch_stats"])
            y, ns_d = apply_with(dec, {"params": p["dec"], "batch_stats": s["dec"]}, z,
                                 interceptors=train, mutable=["batch_stats"])
            error = jnp.mean(jnp.sum(jnp.square(y - x), axis=(1, 2, 3)))
            return error, {"enc": ns_e["batch_stats"], "dec": ns_d["batch_stats"]}

        @jax.jit
        def step(p: Any, s: Any, o: Any, x: jax.Array) -> tuple[Any, Any, Any, jax.Array]:
            (value, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x)
            updates, o = opt.update(g, o, p)
            return optax.apply_updates(p, updates), s, o, value

        data = jnp.asarray(images, jnp.float32)
        n, batch = data.shape[0], min(self.pretrain_batch, data.shape[0])
        opt_state = opt.init(params)
        losses = []
        for i in range(self.pretrain_steps):
            idx = jax.random.choice(jax.random.fold_in(k_data, i), n, (batch,), replace=False)
            params, stats, opt_state, value = step(params, stats, opt_state, data[idx])
            losses.append(value)
        return params["enc"], stats["enc"], np.asarray(losses, np.float32)

    def centre(self, params: Any, stats: Any, images: np.ndarray) -> jax.Array:
        """``c [rep_dim]``: the mean eval-mode feature of ``images [N, H, W, 3]``, small
        coordinates pushed to ``+-eps`` (:func:`fix_centre`)."""
        encode = jax.jit(lambda x: self._encode(params, stats, x, False)[0])
        feats = jnp.concatenate([encode(jnp.asarray(images[i:i + 64], jnp.float32))
                                 for i in range(0, len(images), 64)])
        return fix_centre(jnp.mean(feats, axis=0))

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Pretrained encoder (autoencoder phase), centre ``c`` and radius ``R = 0``.

        ``images``: every training image, as one array or the engine's re-iterable of
        batches (stacked here: the pretraining phase samples from all of them)."""
        images = np.asarray(images, np.float32)
        self._check(images)
        params, stats, _ = self.pretrain(key, images)
        centre = self.centre(params, stats, images)
        return {"params": params,
                "batch_stats": {"net": stats, "radius": jnp.zeros((), jnp.float32),
                                "steps": jnp.zeros((), jnp.int32)},
                "frozen": {"centre": centre}}

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """The chosen objective on the batch; the soft-boundary radius is updated after it."""
        del key  # no randomness besides the batch
        stats = state["batch_stats"]
        feats, new_net = self._encode(params, stats["net"], images, True)
        dist = jnp.sum(jnp.square(feats - state["frozen"]["centre"]), axis=-1)
        radius = stats["radius"]
        if self.objective == "one-class":
            value = jnp.mean(dist)
        else:
            value = radius ** 2 + jnp.mean(jnp.maximum(dist - radius ** 2, 0.0)) / self.nu
            quantile = jnp.quantile(jnp.sqrt(jax.lax.stop_gradient(dist)), 1 - self.nu)
            radius = jnp.where(stats["steps"] >= self.warmup_steps, quantile, radius)
        new = {"net": new_net, "radius": radius, "steps": stats["steps"] + 1}
        return value, {"mean_distance": jnp.mean(dist), "radius": radius, "batch_stats": new}

    def distance(self, state: State, images: jax.Array) -> jax.Array:
        """``[B]`` anomaly scores: squared distance to ``c`` (minus ``R^2`` if soft-boundary)."""
        feats, _ = self._encode(state["params"], state["batch_stats"]["net"], images, False)
        dist = jnp.sum(jnp.square(feats - state["frozen"]["centre"]), axis=-1)
        if self.objective == "soft-boundary":
            dist = dist - state["batch_stats"]["radius"] ** 2
        return dist

    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score: distance to ``c``; map: smoothed ``sum_c |d score / d x|``."""
        self._check(images)
        with full_precision():
            image, grad = jax.vmap(jax.value_and_grad(
                lambda x: self.distance(state, x[None])[0]))(images)
        maps = gaussian_blur(jnp.sum(jnp.abs(grad), axis=-1), self.sigma, self.sigma_side)
        return Scores(image=image, maps=maps)
