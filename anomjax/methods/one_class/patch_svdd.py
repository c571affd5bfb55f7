"""Patch SVDD: patch-level SVDD for anomaly detection and segmentation (Yi & Yoon, ACCV 2020).

A hierarchical encoder embeds 64 px patches from the 32 px embeddings of their four quadrants
(``EncoderHier(64)`` around ``EncoderDeep(32)`` in ``nuclearboy95/Anomaly-Detection-
PatchSVDD-PyTorch``; in training a 64 px patch is split into its quadrants, ``forward_hier``).
Both scales are trained with two losses on patch pairs sampled inside the jitted step:

* SVDD': ``|| f(p1) - f(p2) ||_2`` for a patch and a neighbour shifted by at most ``K/32``
  pixels (never 0), pulling nearby embeddings together;
* position: an 8-way classifier on ``f(p1) - f(p2)`` predicts where ``p2`` lies relative to
  ``p1`` (offset ``3K/4 + U{0..K/4-1}`` along each axis of one of 8 directions; both patches
  shifted by a random RGB offset and Gaussian noise of std 0.02), cross-entropy.

Loss ``= pos_64 + pos_32 + lambda (svdd_64 + svdd_32)``, ``lambda = 1`` (the code's default;
the README's example uses 1e-3), Adam lr 1e-4, 300 epochs, embedding size 64, LeakyReLU 0.1
and tanh outputs, the position classifier's last layer with column-normalised weights that
get no gradient (``torch.no_grad`` in the code). As in the code's ``main_train.py``, every
optimiser update sees ``pair_batch = 64`` pairs per task and scale, each from an image drawn
at random, and an epoch holds 100 pairs per image: with the default batch of 16 images
(``default_batch_size``) a training step makes ``updates_per_step = 25`` updates (a
:class:`~anomjax.methods.optimization.GroupedOptimizer` phase; the parameters are its one
group ``net``). Images are standardised by subtracting the per-pixel mean image of all
training images (``mvtecad.py`` ``get_mean``; /255 scale as in the code).

Test: embeddings of every 64 px patch at stride 16 and every 32 px patch at stride 4 (computed
densely and exactly: the 32 px encoder is fully convolutional with stride 2, the 64 px head a
2x2 convolution of dilation 16 over it); each patch's score is the L2 distance to its nearest
training-patch embedding of the same scale (from any position), spread to pixels as the mean
over the patches covering them, and the two scales' maps are multiplied (the paper's
aggregation; ``aggregate="sum"`` is the code's other variant). Image score: the maximum.

Deviations: patch coordinates at other image sizes than 256 follow the same rules; a pair's
image is drawn with replacement from the batch (the code's shuffled epoch uses each image
exactly 100 times).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.optimization import GroupedOptimizer, Phase, Update
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.knn import nearest_neighbours
from anomjax.nn.receptive_upsample import receptive_upsample
from anomjax.types import Batch, Scores

HIGHEST = jax.lax.Precision.HIGHEST


def _lrelu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, 0.1)


class SmallEncoder(nn.Module):
    """``EncoderDeep(32)``: ``[B, H, W, 3] -> [B, (H-32)/2 + 1, (W-32)/2 + 1, D]``, one
    embedding per 32 px window at stride 2 (``[B, 1, 1, D]`` for a 32 px patch)."""

    dim: int = 64
    precision: Any = None
    hidden: tuple[int, ...] = (32, 64, 128, 128, 64, 32, 32)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        widths = (*self.hidden, self.dim)
        for i, w in enumerate(widths):
            x = nn.Conv(w, (3, 3), strides=2 if i == 0 else 1, padding="VALID",
                        precision=self.precision)(x)
            x = _lrelu(x) if i < len(widths) - 1 else jnp.tanh(x)
        return x


class HierarchicalHead(nn.Module):
    """``EncoderHier(64)``'s head over the 32 px embedding map ``[B, h, w, D]`` at stride
    ``dilation``-apart quadrants: 2x2 conv (dilated) to 128, LeakyReLU, 1x1 to D, tanh."""

    dim: int = 64
    dilation: int = 16
    precision: Any = None
    width: int = 128

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        h = nn.Conv(self.width, (2, 2), kernel_dilation=self.dilation, padding="VALID",
                    precision=self.precision)(h)
        return jnp.tanh(nn.Conv(self.dim, (1, 1), precision=self.precision)(_lrelu(h)))


class PositionClassifier(nn.Module):
    """``f(p1) - f(p2) [N, D] -> [N, 8]`` logits: 128-128 LeakyReLU MLP, then a linear layer
    whose weights are used column-normalised and receive no gradient (as in the code)."""

    @nn.compact
    def __call__(self, diff: jax.Array) -> jax.Array:
        h = _lrelu(nn.Dense(128)(diff))
        h = _lrelu(nn.Dense(128)(h))
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (128, 8))
        bias = self.param("bias", nn.initializers.zeros, (8,))
        w = jax.lax.stop_gradient(kernel / jnp.linalg.norm(kernel, axis=1, keepdims=True))
        return h @ w + bias


_DIRECTIONS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)],
                       np.int32)


def position_pair(key: jax.Array, shape: tuple[int, int], k: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(p1 [2], p2 [2], direction [])``: top-left corners of a ``k`` patch and of its
    neighbour in one of 8 directions, ``3k/4 + U{0..k/4-1}`` away per axis (clipped)."""
    k1, k2, k3 = jax.random.split(key, 3)
    limit = jnp.array([shape[0] - k, shape[1] - k])
    p1 = jax.random.randint(k1, (2,), 0, limit + 1)
    direction = jax.random.randint(k2, (), 0, 8)
    jitter = jax.random.randint(k3, (2,), 0, max(k // 4, 1))
    p2 = jnp.clip(p1 + jnp.asarray(_DIRECTIONS)[direction] * (jitter + 3 * k // 4), 0, limit)
    return p1, p2, direction


def svdd_pair(key: jax.Array, shape: tuple[int, int], k: int) -> tuple[jax.Array, jax.Array]:
    """``(p1, p2)``: a ``k`` patch and a neighbour shifted by ``U{-k/32..k/32}`` per axis,
    not both zero (clipped to the image)."""
    k1, k2 = jax.random.split(key)
    j = max(k // 32, 1)
    limit = jnp.array([shape[0] - k, shape[1] - k])
    p1 = jax.random.randint(k1, (2,), 0, limit + 1)
    # Draw among the (2j+1)^2 - 1 non-zero shifts uniformly (the code rejects (0, 0)).
    n = (2 * j + 1) ** 2
    idx = jax.random.randint(k2, (), 0, n - 1)
    idx = jnp.where(idx >= n // 2, idx + 1, idx)
    shift = jnp.stack([idx // (2 * j + 1), idx % (2 * j + 1)]) - j
    return p1, jnp.clip(p1 + shift, 0, limit)


def crop(image: jax.Array, corner: jax.Array, k: int) -> jax.Array:
    """The ``k x k`` patch of ``image [H, W, C]`` at ``corner [2]``."""
    return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (k, k, image.shape[-1]))


@register
@dataclasses.dataclass(frozen=True)
class PatchSVDD(TrainedMethod):
    """Patch SVDD (see the module docstring).

    Attributes:
      dim: embedding size D.
      encoder_widths, head_width: the code's ``EncoderDeep`` and ``EncoderHier`` widths.
      lambda_svdd: weight of the SVDD' losses.
      learning_rate: Adam's rate.
      pair_batch: pairs per task and scale in one optimiser update (the code's batch 64).
      updates_per_step: optimiser updates per training step (25: 100 pairs per image and
        epoch at batch 16, as the code's ``repeat=100``).
      stride_64, stride_32: test-time patch strides of the two scales.
      aggregate: ``"multiply"`` (paper) or ``"sum"`` of the two scales' maps.
    """

    name: ClassVar[str] = "patch_svdd"
    default_epochs: ClassVar[int] = 300
    default_batch_size: ClassVar[int] = 16
    init_on_all_images: ClassVar[bool] = True

    dim: int = hyper(64, low=1)
    encoder_widths: tuple[int, ...] = (32, 64, 128, 128, 64, 32, 32)
    head_width: int = hyper(128, low=1)
    lambda_svdd: float = hyper(1.0, low=0.0)
    learning_rate: float = hyper(1e-4, low=0.0, low_open=True)
    pair_batch: int = hyper(64, low=1)
    updates_per_step: int = hyper(25, low=1)
    stride_64: int = hyper(16, low=2)
    stride_32: int = hyper(4, low=2)
    aggregate: str = hyper("multiply", choices=("multiply", "sum"))

    def _check(self, images: Any) -> None:
        check_images(self.name, images, min_size=64)
        if self.stride_64 % 2 or self.stride_32 % 2:
            raise ValueError("patch_svdd: stride_64 and stride_32 must be even (the 32 px "
                             "encoder has stride 2)")

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Encoder, 64 px head and the two position classifiers (group ``net``); the
        per-pixel mean image ``[H, W, 3]`` of ``images``: every training image, as one array
        or the engine's re-iterable of batches (summed batch by batch)."""
        if hasattr(images, "shape"):
            self._check(images)
            mean = jnp.mean(jnp.asarray(images, jnp.float32), axis=0)
        else:
            total, count = None, 0
            for batch in images:
                self._check(batch)
                part = np.sum(np.asarray(batch, np.float64), axis=0)
                total, count = part if total is None else total + part, count + len(batch)
            mean = jnp.asarray(total / count, jnp.float32)
        ks = jax.random.split(key, 4)
        x = jnp.zeros((1, 64, 64, 3), jnp.float32)
        enc = self._encoder().init(ks[0], x)["params"]
        h = self._encoder().apply({"params": enc}, x)
        head = self._head().init(ks[1], h)["params"]
        cls = {f"cls_{k}": PositionClassifier().init(ks[2 + i], jnp.zeros((1, self.dim)))[
            "params"] for i, k in enumerate((64, 32))}
        return {"params": {"net": {"encoder": enc, "head": head, **cls}},
                "frozen": {"mean_image": mean}}

    def optimizer(self, total_steps: int) -> GroupedOptimizer:
        """Adam; ``updates_per_step`` updates of the group ``net`` per step."""
        del total_steps
        updates = tuple(Update(f"pairs_{i}", "net", self.loss)
                        for i in range(self.updates_per_step))
        return GroupedOptimizer({"net": optax.adam(self.learning_rate)}, (Phase(updates),))

    def embed(self, params: Any, x: jax.Array, k: int, precision: Any = None) -> jax.Array:
        """Dense embeddings of standardised images: ``[B, h, w, D]`` of every ``k`` window
        (k = 32 or 64) at stride 2; ``params`` is the group ``net``."""
        h = self._encoder(precision).apply({"params": params["encoder"]}, x)
        if k == 32:
            return h
        return self._head(16, precision).apply({"params": params["head"]}, h)

    def _encoder(self, precision: Any = None) -> SmallEncoder:
        return SmallEncoder(self.dim, precision, tuple(self.encoder_widths))

    def _head(self, dilation: int = 16, precision: Any = None) -> HierarchicalHead:
        return HierarchicalHead(self.dim, dilation, precision, self.head_width)

    def embed_patches(self, params: Any, patches: jax.Array, k: int) -> jax.Array:
        """``[N, k, k, 3] -> [N, D]``; a 64 px patch from the 32 px embeddings of its four
        quadrants (the code's ``forward_hier``: a quarter of the dense encoder's work)."""
        if k == 32:
            return self.embed(params, patches, 32)[:, 0, 0]
        n = patches.shape[0]
        quads = patches.reshape(n, 2, 32, 2, 32, 3).transpose(0, 1, 3, 2, 4, 5)
        h = self.embed(params, quads.reshape(4 * n, 32, 32, 3), 32).reshape(n, 2, 2, -1)
        return self._head(1).apply({"params": params["head"]}, h)[:, 0, 0]

    def pairs(self, key: jax.Array, x: jax.Array) -> dict[str, Any]:
        """Patch pairs of standardised images ``x [B, H, W, 3]``: ``{"pos_K": (p1, p2,
        labels), "svdd_K": (p1, p2)}``, ``[pair_batch, K, K, 3]`` each, every pair from an
        image drawn at random (jittable)."""
        b, shape, n = x.shape[0], x.shape[1:3], self.pair_batch
        out: dict[str, Any] = {}
        for i, k in enumerate((64, 32)):
            kp, ks, kn, ki, kj = jax.random.split(jax.random.fold_in(key, i), 5)
            images = x[jax.random.randint(ki, (n,), 0, b)]
            c1, c2, labels = jax.vmap(lambda kk, kk_=k: position_pair(kk, shape, kk_))(
                jax.random.split(kp, n))
            p1 = jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, c1)
            p2 = jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, c2)
            k_shift, k_noise = jax.random.split(kn)
            shift = 0.02 * jax.random.normal(k_shift, (2, n, 1, 1, 3))
            noise = 0.02 * jax.random.normal(k_noise, (2, *p1.shape))
            out[f"pos_{k}"] = (p1 + shift[0] + noise[0], p2 + shift[1] + noise[1], labels)
            images = x[jax.random.randint(kj, (n,), 0, b)]
            s1, s2 = jax.vmap(lambda kk, kk_=k: svdd_pair(kk, shape, kk_))(
                jax.random.split(ks, n))
            out[f"svdd_{k}"] = (jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, s1),
                                jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, s2))
        return out

    def pair_loss(self, params: Any, pairs: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
        """``pos_64 + pos_32 + lambda (svdd_64 + svdd_32)`` of given pairs (see :meth:`pairs`);
        ``params`` is the group ``net``."""
        aux: dict[str, Any] = {}
        total = jnp.zeros((), jnp.float32)
        for name, pair in pairs.items():
            task, k = name.split("_")[0], int(name.split("_")[1])
            e1 = self.embed_patches(params, pair[0], k)
            e2 = self.embed_patches(params, pair[1], k)
            if task == "pos":
                logits = PositionClassifier().apply({"params": params[f"cls_{k}"]}, e1 - e2)
                value = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits,
                                                                                 pair[2]))
                total = total + value
            else:
                value = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(e1 - e2), axis=-1) + 1e-12))
                total = total + self.lambda_svdd * value
            aux[name] = value
        return total, aux

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """:meth:`pair_loss` of freshly sampled pairs of the standardised batch (``params``:
        every group, as the grouped step passes them)."""
        x = images - state["frozen"]["mean_image"]
        return self.pair_loss(params["net"], self.pairs(key, x))

    def _grid_embeddings(self, state: State, images: jax.Array) -> dict[int, jax.Array]:
        """``{K: [B, ny, nx, D]}`` of the test-time patch grids of both scales."""
        x = images - state["frozen"]["mean_image"]
        out = {}
        for k, stride in ((64, self.stride_64), (32, self.stride_32)):
            dense = self.embed(state["params"]["net"], x, k, HIGHEST)
            out[k] = dense[:, ::stride // 2, ::stride // 2]
        return out

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """Store every training patch embedding of both scales (the nearest-neighbour banks)."""
        fn = jax.jit(self._grid_embeddings)
        banks: dict[int, list[jax.Array]] = {64: [], 32: []}
        for batch in batches:
            for k, e in fn(state, jnp.asarray(batch.images, jnp.float32)).items():
                banks[k].append(e.reshape(-1, e.shape[-1]))
        bank = {f"k{k}": jnp.concatenate(v) for k, v in banks.items()}
        return {**state, "frozen": {**state["frozen"], "banks": bank}}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Nearest-training-patch distance maps of both scales, multiplied (or summed)."""
        self._check(images)
        if images.shape[1:3] != state["frozen"]["mean_image"].shape[:2]:
            raise ValueError(f"patch_svdd: images of {images.shape[1:3]} px, trained at "
                             f"{state['frozen']['mean_image'].shape[:2]} (the mean image)")
        if "banks" not in state["frozen"]:
            raise ValueError("patch_svdd: the state has no training-patch banks; train it with "
                             "anomjax.train.train_method (which calls calibrate)")
        size = images.shape[1:3]
        maps = []
        for k, grid in self._grid_embeddings(state, images).items():
            b, ny, nx, d = grid.shape
            dist, _ = nearest_neighbours(grid.reshape(-1, d), state["frozen"]["banks"][f"k{k}"])
            stride = self.stride_64 if k == 64 else self.stride_32
            maps.append(receptive_upsample(dist[:, 0].reshape(b, ny, nx), size, stride=stride,
                                           kernel=k, sigma=None, normalize=True))
        combined = maps[0] * maps[1] if self.aggregate == "multiply" else maps[0] + maps[1]
        return Scores(image=jnp.max(combined, axis=(1, 2)), maps=combined)
