"""Patch SVDD: patch-level SVDD for anomaly detection and segmentation (Yi & Yoon, ACCV 2020).

A hierarchical encoder embeds 64 px patches from the 32 px embeddings of their four quadrants
(``EncoderHier(64)`` around ``EncoderDeep(32)`` in ``nuclearboy95/Anomaly-Detection-
PatchSVDD-PyTorch``). Both scales are trained with two losses on patch pairs sampled inside
the jitted step from every image of the batch (``pairs_per_image`` pairs per task and scale):

* SVDD': ``|| f(p1) - f(p2) ||_2`` for a patch and a neighbour shifted by at most ``K/32``
  pixels (never 0), pulling nearby embeddings together;
* position: an 8-way classifier on ``f(p1) - f(p2)`` predicts where ``p2`` lies relative to
  ``p1`` (offset ``3K/4 + U{0..K/4-1}`` along each axis of one of 8 directions; both patches
  shifted by a random RGB offset and Gaussian noise of std 0.02), cross-entropy.

Loss ``= pos_64 + pos_32 + lambda (svdd_64 + svdd_32)``, ``lambda = 1`` (the code's default),
Adam lr 1e-4, 300 epochs, embedding size 64, LeakyReLU 0.1 and tanh outputs, the position
classifier's last layer with column-normalised weights that get no gradient (``torch.no_grad``
in the code). Images are standardised by subtracting the training images' per-channel mean
(/255 scale as in the code; here the mean of the first training batch).

Test: embeddings of every 64 px patch at stride 16 and every 32 px patch at stride 4 (computed
densely and exactly: the 32 px encoder is fully convolutional with stride 2, the 64 px head a
2x2 convolution of dilation 16 over it); each patch's score is the L2 distance to its nearest
training-patch embedding of the same scale (from any position), spread to pixels as the mean
over the patches covering them, and the two scales' maps are multiplied (the paper's
aggregation; ``aggregate="sum"`` is the code's other variant). Image score: the maximum.

Deviations: the code samples 100 pairs per image and epoch; here ``pairs_per_image`` per
image and step; patch coordinates at other image sizes than 256 follow the same rules.
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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        widths = (32, 64, 128, 128, 64, 32, 32, self.dim)
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

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        h = nn.Conv(128, (2, 2), kernel_dilation=self.dilation, padding="VALID",
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
      lambda_svdd: weight of the SVDD' losses.
      learning_rate: Adam's rate.
      pairs_per_image: pairs drawn per image, task and scale at every step.
      stride_64, stride_32: test-time patch strides of the two scales.
      aggregate: ``"multiply"`` (paper) or ``"sum"`` of the two scales' maps.
    """

    name: ClassVar[str] = "patch_svdd"
    default_epochs: ClassVar[int] = 300

    dim: int = hyper(64, low=1)
    lambda_svdd: float = hyper(1.0, low=0.0)
    learning_rate: float = hyper(1e-4, low=0.0, low_open=True)
    pairs_per_image: int = hyper(4, low=1)
    stride_64: int = hyper(16, low=2)
    stride_32: int = hyper(4, low=2)
    aggregate: str = hyper("multiply", choices=("multiply", "sum"))

    def _check(self, images: Any) -> None:
        check_images(self.name, images, min_size=64)
        if self.stride_64 % 2 or self.stride_32 % 2:
            raise ValueError("patch_svdd: stride_64 and stride_32 must be even (the 32 px "
                             "encoder has stride 2)")

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Encoder, 64 px head and the two position classifiers; the channel mean."""
        self._check(images)
        ks = jax.random.split(key, 4)
        x = jnp.zeros((1, 64, 64, 3), jnp.float32)
        enc = SmallEncoder(self.dim).init(ks[0], x)["params"]
        h = SmallEncoder(self.dim).apply({"params": enc}, x)
        head = HierarchicalHead(self.dim).init(ks[1], h)["params"]
        cls = {f"cls_{k}": PositionClassifier().init(ks[2 + i], jnp.zeros((1, self.dim)))[
            "params"] for i, k in enumerate((64, 32))}
        mean = jnp.mean(jnp.asarray(images, jnp.float32), axis=(0, 1, 2))
        return {"params": {"encoder": enc, "head": head, **cls},
                "frozen": {"channel_mean": mean}}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        del total_steps
        return optax.adam(self.learning_rate)

    def embed(self, params: Any, x: jax.Array, k: int, precision: Any = None) -> jax.Array:
        """Dense embeddings of standardised images: ``[B, h, w, D]`` of every ``k`` window
        (k = 32 or 64) at stride 2."""
        h = SmallEncoder(self.dim, precision).apply({"params": params["encoder"]}, x)
        if k == 32:
            return h
        return HierarchicalHead(self.dim, 16, precision).apply({"params": params["head"]}, h)

    def pairs(self, key: jax.Array, x: jax.Array) -> dict[str, Any]:
        """Patch pairs of standardised images ``x [B, H, W, 3]``: ``{"pos_K": (p1, p2,
        labels), "svdd_K": (p1, p2)}``, ``[B * pairs_per_image, K, K, 3]`` each (jittable)."""
        b, shape, n = x.shape[0], x.shape[1:3], self.pairs_per_image
        images = jnp.repeat(x, n, axis=0)
        out: dict[str, Any] = {}
        for i, k in enumerate((64, 32)):
            kp, ks, kn = jax.random.split(jax.random.fold_in(key, i), 3)
            c1, c2, labels = jax.vmap(lambda kk, kk_=k: position_pair(kk, shape, kk_))(
                jax.random.split(kp, b * n))
            p1 = jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, c1)
            p2 = jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, c2)
            k_shift, k_noise = jax.random.split(kn)
            shift = 0.02 * jax.random.normal(k_shift, (2, b * n, 1, 1, 3))
            noise = 0.02 * jax.random.normal(k_noise, (2, *p1.shape))
            out[f"pos_{k}"] = (p1 + shift[0] + noise[0], p2 + shift[1] + noise[1], labels)
            s1, s2 = jax.vmap(lambda kk, kk_=k: svdd_pair(kk, shape, kk_))(
                jax.random.split(ks, b * n))
            out[f"svdd_{k}"] = (jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, s1),
                                jax.vmap(lambda im, c, kk=k: crop(im, c, kk))(images, s2))
        return out

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``pos_64 + pos_32 + lambda (svdd_64 + svdd_32)`` on freshly sampled pairs."""
        x = images - state["frozen"]["channel_mean"]
        aux: dict[str, Any] = {}
        total = jnp.zeros((), jnp.float32)
        for k, (task, pair) in ((int(name.split("_")[1]), (name.split("_")[0], v))
                                for name, v in self.pairs(key, x).items()):
            e1 = self.embed(params, pair[0], k)[:, 0, 0]
            e2 = self.embed(params, pair[1], k)[:, 0, 0]
            if task == "pos":
                logits = PositionClassifier().apply({"params": params[f"cls_{k}"]}, e1 - e2)
                value = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits,
                                                                                 pair[2]))
                total = total + value
            else:
                value = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(e1 - e2), axis=-1) + 1e-12))
                total = total + self.lambda_svdd * value
            aux[f"{task}_{k}"] = value
        return total, aux

    def _grid_embeddings(self, state: State, images: jax.Array) -> dict[int, jax.Array]:
        """``{K: [B, ny, nx, D]}`` of the test-time patch grids of both scales."""
        x = images - state["frozen"]["channel_mean"]
        out = {}
        for k, stride in ((64, self.stride_64), (32, self.stride_32)):
            dense = self.embed(state["params"], x, k, HIGHEST)
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
