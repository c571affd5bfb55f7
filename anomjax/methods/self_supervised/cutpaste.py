"""CutPaste: self-supervised learning for anomaly detection and localization (Li, Sohn, Yoon &
Pfister, CVPR 2021), the paper's 3-way variant.

A CNN with a projection head learns to tell normal images from CutPaste images (a rectangle
of 2-15 % of the area cut, colour-jittered and pasted elsewhere) and from CutPaste-scar
images (a thin rotated strip): every training image is colour-jittered and used three times
(normal, CutPaste, scar), classes 0/1/2, cross-entropy. The augmentations run inside the
jitted step (:func:`anomjax.data.anomalies.cutpaste`, :func:`~anomjax.data.anomalies.
cutpaste_scar`).

Detection: a Gaussian density estimator (Ledoit-Wolf covariance, L2-normalised embeddings, as
``LilitYolyan/CutPaste``) is fitted in ``calibrate`` on the globally pooled backbone
embeddings of the training images; the image score is the Mahalanobis distance. Localisation,
as in the paper: a second network of the same kind learns the same task on random
``patch_size`` crops, dense patches (stride ``patch_stride``) of a test image are scored by a
second density fitted on all training patches, and the patch scores are spread back to the
pixels with Gaussian receptive-field upsampling (:mod:`anomjax.nn.receptive_upsample`,
``upsample_sigma``; normalised by the summed weights, i.e. a Gaussian-weighted mean of the
overlapping patches).

``tests/parity/test_parity_cutpaste.py`` pins the head, the 3-way loss, its gradient, one SGD
step and the density score to the unofficial PyTorch port ``Runinho/pytorch-cutpaste`` (the
authors' code is TensorFlow). Paper / reference defaults kept: SGD lr 0.03, momentum 0.9,
weight decay 3e-5, cosine decay, 256 epochs, an MLP head of eight 512-unit layers then 128
(each Linear + BatchNorm + ReLU), patches of 64 px (at 256 px images) with stride 4, BatchNorm
in training mode while training.
Deviations: the paper's ResNet-18 (ImageNet-pretrained) is replaced by EfficientNet-Lite0
(pretrained, trained end to end) pooled at ``tap`` (``stage7``, 320-d); the reference's
20-epoch backbone freeze is not done; scar sizes (2-16 x 10-25 px at 256 px) and the patch
size scale with the image (``patch_size`` is in pixels of the input); the paper averages the
upsampled patch scores with a Gaussian of sigma 4 as here, but its exact kernel is not
published.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from anomjax.data.anomalies import color_jitter, cutpaste, cutpaste_scar
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.methods.self_supervised.gaussian_density import distance, fit_gaussian
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.nn.receptive_upsample import receptive_upsample
from anomjax.nn.teacher import tap_variables, teacher, teacher_variables
from anomjax.types import Batch, Scores


class ProjectionHead(nn.Module):
    """``[B, D] -> [B, classes]``: Linear + BatchNorm + ReLU per width, then a linear layer."""

    widths: tuple[int, ...]
    classes: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for w in self.widths:
            x = nn.Dense(w)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)(x))
        return nn.Dense(self.classes)(x)


def three_way(key: jax.Array, images: jax.Array, reference_size: float
              ) -> tuple[jax.Array, jax.Array]:
    """``(images [3B, H, W, C], labels [3B])``: colour-jittered images, their CutPaste and
    their scar versions (labels 0, 1, 2). Scar sizes are those of a ``reference_size`` image."""
    b = images.shape[0]
    k_jit, k_cp, k_scar = jax.random.split(key, 3)
    jittered = jax.vmap(lambda k, x: color_jitter(k, x, 0.1, 0.1))(jax.random.split(k_jit, b),
                                                                    images)
    pasted, _ = jax.vmap(cutpaste)(jax.random.split(k_cp, b), jittered)
    scar, _ = jax.vmap(lambda k, x: cutpaste_scar(k, x, reference_size=reference_size))(
        jax.random.split(k_scar, b), jittered)
    labels = jnp.repeat(jnp.arange(3, dtype=jnp.int32), b)
    return jnp.concatenate([jittered, pasted, scar]), labels


def random_crops(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """One random ``size x size`` crop per image: ``[B, H, W, C] -> [B, size, size, C]``."""
    b, h, w, c = images.shape
    ys = jax.random.randint(key, (b,), 0, h - size + 1)
    xs = jax.random.randint(jax.random.fold_in(key, 1), (b,), 0, w - size + 1)
    return jax.vmap(lambda x, y, z: jax.lax.dynamic_slice(x, (y, z, 0), (size, size, c)))(
        images, ys, xs)


def dense_patches(image: jax.Array, size: int, stride: int) -> jax.Array:
    """All ``size`` patches of ``image [H, W, C]`` at ``stride``: ``[ny, nx, size, size, C]``."""
    h, w, _ = image.shape
    ys = jnp.arange(0, h - size + 1, stride)
    xs = jnp.arange(0, w - size + 1, stride)
    rows = ys[:, None] + jnp.arange(size)[None]  # [ny, size]
    cols = xs[:, None] + jnp.arange(size)[None]  # [nx, size]
    return image[rows[:, None, :, None], cols[None, :, None, :]]


@register
@dataclasses.dataclass(frozen=True)
class CutPaste(TrainedMethod):
    """CutPaste 3-way with image- and patch-level density estimation (module docstring).

    Attributes:
      backbone, tap: the classifier's CNN (pretrained, trained) and the pooled embedding tap.
      head_widths: hidden widths of the projection head.
      learning_rate, momentum, weight_decay: SGD (cosine-decayed rate).
      patch_size, patch_stride: localisation patches, in input pixels (0 turns the
        patch-level model off; the map is then the image score everywhere).
      upsample_sigma: the Gaussian of the receptive-field upsampling of patch scores.
    """

    name: ClassVar[str] = "cutpaste"
    default_epochs: ClassVar[int] = 256

    backbone: str = "efficientnet_lite0"
    tap: str = "stage7"
    head_widths: tuple[int, ...] = (512,) * 8 + (128,)
    learning_rate: float = hyper(0.03, low=0.0, low_open=True)
    momentum: float = hyper(0.9, low=0.0, high=1.0)
    weight_decay: float = hyper(3e-5, low=0.0)
    patch_size: int = hyper(64, low=0)
    patch_stride: int = hyper(4, low=1)
    upsample_sigma: float = hyper(4.0, low=0.0, low_open=True, high=256.0)

    @property
    def levels(self) -> tuple[str, ...]:
        return ("image", "patch") if self.patch_size else ("image",)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Pretrained backbone + random head, for the image level and the patch level."""
        check_images(self.name, images, min_size=max(self.patch_size, 32))
        head = ProjectionHead(tuple(self.head_widths))
        params, stats = {}, {}
        dim = teacher(self.backbone).taps[self.tap].channels
        full = teacher_variables(self.backbone, None)
        for i, level in enumerate(self.levels):
            k_h = jax.random.split(jax.random.fold_in(key, i))[1]
            bb = tap_variables(self.backbone, full, (self.tap,))
            hv = head.init(k_h, jnp.zeros((2, dim), jnp.float32))
            params[level] = {"backbone": bb["params"], "head": hv["params"]}
            stats[level] = {"backbone": bb["batch_stats"], "head": hv["batch_stats"]}
        identity = {level: {"mean": jnp.zeros((dim,)), "chol": jnp.eye(dim)}  # until calibrate
                    for level in self.levels}
        return {"params": params, "batch_stats": stats, "frozen": {"density": identity}}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """SGD with momentum, coupled weight decay and a cosine-decayed rate."""
        schedule = optax.cosine_decay_schedule(self.learning_rate, max(total_steps, 1))
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.sgd(schedule, momentum=self.momentum))

    def _forward(self, params: Any, stats: Any, x: jax.Array, train: bool
                 ) -> tuple[jax.Array, jax.Array, Any]:
        """``(embedding [N, D], logits [N, 3], new batch_stats)`` of ``x [N, h, w, 3]``."""
        interceptors = [batch_norm_in_train_mode(0.9)] if train else []
        mutable = ["batch_stats"] if train else False
        out = apply_with(teacher(self.backbone).module,
                         {"params": params["backbone"], "batch_stats": stats["backbone"]}, x,
                         interceptors=interceptors, mutable=mutable, taps=(self.tap,),
                         logits=False)
        feats, new_b = (out[0], out[1]["batch_stats"]) if train else (out, None)
        emb = jnp.mean(feats[self.tap].astype(jnp.float32), axis=(1, 2))
        logits, new_h = self.head(params["head"], stats["head"], emb, train)
        return emb, logits, {"backbone": new_b, "head": new_h}

    def head(self, params: Any, stats: Any, embeddings: jax.Array, train: bool
             ) -> tuple[jax.Array, Any]:
        """``(logits [N, 3], new batch_stats or None)`` of the projection head on pooled
        embeddings ``[N, D]`` (BatchNorm on batch statistics when ``train``)."""
        interceptors = [batch_norm_in_train_mode(0.9)] if train else []
        out = apply_with(ProjectionHead(tuple(self.head_widths)),
                         {"params": params, "batch_stats": stats}, embeddings,
                         interceptors=interceptors, mutable=["batch_stats"] if train else False)
        return (out[0], out[1]["batch_stats"]) if train else (out, None)

    def augmented_batches(self, images: jax.Array, key: jax.Array
                          ) -> dict[str, tuple[jax.Array, jax.Array]]:
        """``{level: (3-way images, labels)}`` for a batch ``[B, H, W, 3]`` (jittable)."""
        k_img, k_crop, k_patch = jax.random.split(key, 3)
        size = min(images.shape[1:3])
        out = {"image": three_way(k_img, images, 256.0)}
        if self.patch_size:
            crops = random_crops(k_crop, images, self.patch_size)
            out["patch"] = three_way(k_patch, crops, 256.0 * self.patch_size / size)
        return out

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """Mean 3-way cross-entropy, summed over the image and patch levels."""
        total = jnp.zeros((), jnp.float32)
        aux: dict[str, Any] = {"batch_stats": {}}
        for level, (x, labels) in self.augmented_batches(images, key).items():
            _, logits, new = self._forward(params[level], state["batch_stats"][level], x, True)
            ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
            accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
            aux.update({f"ce_{level}": ce, f"accuracy_{level}": accuracy})
            aux["batch_stats"][level] = new
            total = total + ce
        return total, aux

    def _image_embeddings(self, state: State, images: jax.Array) -> jax.Array:
        p, s = state["params"]["image"], state["batch_stats"]["image"]
        return self._forward(p, s, images, False)[0]

    def _patch_embeddings(self, state: State, images: jax.Array) -> jax.Array:
        """``[B, ny, nx, D]`` embeddings of the dense patches, one image at a time."""
        p, s = state["params"]["patch"], state["batch_stats"]["patch"]

        def one(image: jax.Array) -> jax.Array:
            patches = dense_patches(image, self.patch_size, self.patch_stride)
            ny, nx = patches.shape[:2]
            emb = self._forward(p, s, patches.reshape(ny * nx, *patches.shape[2:]), False)[0]
            return emb.reshape(ny, nx, -1)

        return jax.lax.map(one, images)

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """Fit the image-level (and patch-level) Gaussians on the training embeddings."""
        image_fn = jax.jit(self._image_embeddings)
        patch_fn = jax.jit(self._patch_embeddings)
        embs: dict[str, list[jax.Array]] = {level: [] for level in self.levels}
        for batch in batches:
            x = jnp.asarray(batch.images, jnp.float32)
            embs["image"].append(image_fn(state, x))
            if self.patch_size:
                e = patch_fn(state, x)
                embs["patch"].append(e.reshape(-1, e.shape[-1]))
        density = {level: fit_gaussian(jnp.concatenate(e)) for level, e in embs.items()}
        return {**state, "frozen": {**state["frozen"], "density": density}}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score: Mahalanobis distance of the image embedding; map: upsampled patch
        distances (the image score everywhere without the patch level)."""
        check_images(self.name, images, min_size=max(self.patch_size, 32))
        density = state["frozen"]["density"]
        image = distance(density["image"], self._image_embeddings(state, images))
        size = images.shape[1:3]
        if not self.patch_size:
            return Scores(image=image, maps=jnp.broadcast_to(image[:, None, None],
                                                             (images.shape[0], *size)))
        patch = distance(density["patch"], self._patch_embeddings(state, images))
        maps = receptive_upsample(patch, size, stride=self.patch_stride,
                                  kernel=self.patch_size, sigma=self.upsample_sigma,
                                  normalize=True)
        return Scores(image=image, maps=maps)
