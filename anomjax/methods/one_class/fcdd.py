"""FCDD: explainable deep one-class classification (Liznerski et al., ICLR 2021).

A fully convolutional network ``phi`` maps an image to a low-resolution map; its pseudo-Huber
magnitude ``A = sqrt(phi^2 + 1) - 1`` is the anomaly heatmap ``[B, h, w]``. The hypersphere
classifier loss pulls normal samples' heatmaps to zero and pushes anomalous ones away:
``mean(A)`` for a normal sample, ``-log(1 - exp(-mean(A)))`` for an anomalous one (the code's
``__supervised_loss``, used by its MVTec setting ``malformed_normal``). Anomalies come from
outlier exposure by synthetic generators, made inside the jitted step: each training image is
replaced with probability 0.5 by a malformed version of itself (online supervision), by
default with the paper's confetti noise (:func:`anomjax.data.anomalies.confetti_noise`);
``outlier="mixed"`` draws confetti, CutPaste and DRAEM-style Perlin anomalies in equal parts
(not in the paper). ``supervision="pixel"`` is the code's ``malformed_normal_gt`` instead:
the heatmap is upsampled first and the two terms use the normal and the anomalous pixels of
the generated mask.

Test: the heatmap is upsampled to the input with the paper's Gaussian transposed
receptive-field upsampling (:mod:`anomjax.nn.receptive_upsample`; ``gauss_std = 12`` at 224
px, scaled to the image size; window ``2 round(3 std) + 1`` centred on each output unit); the
image score is ``mean(A)`` (the loss's normal term, as in the code).

Network: the paper's MVTec model is a VGG11 pretrained on ImageNet with its first layers
frozen plus a 1x1 output convolution. Here (deviation) the frozen pretrained part is
EfficientNet-Lite0 up to ``tap`` (``stage3``, stride 8, like VGG's output at 28x28 of 224),
followed by the trainable part of the code's ``FCDD_CNN224_VGG_F``: ``head_widths`` 3x3
convolutions, each followed by BatchNorm (``head_norm``; batch statistics in training,
running averages at test, as ``net.train()`` / ``net.eval()`` do) and ReLU, then the 1x1
output convolution (biases on, the code's default). The widths are ours (the code's are 512,
512 after VGG's 256 channels). Optimiser as the code's MVTec setting (``DefaultMvtecConfig``):
SGD with Nesterov momentum 0.9, learning rate 1e-3, weight decay 1e-4, 200 epochs, batches of
128 (the code's 16 x 8 accumulated batches, ``default_batch_size``); its per-epoch
learning-rate factor 0.985 is applied per step so that the whole run decays by ``0.985^200``
whatever its length. The code's local contrast normalisation and training augmentations are
not used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from anomjax.data.anomalies import confetti_noise, cutpaste, draem_augment
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.nn.receptive_upsample import receptive_upsample
from anomjax.nn.teacher import frozen_features, tap_variables, teacher, teacher_variables
from anomjax.types import Scores


class Head(nn.Module):
    """``[B, h, w, C] -> [B, h, w]``: ``3x3`` convolutions, each followed by BatchNorm
    (``norm``; running statistics here, batch statistics in training through
    :func:`~anomjax.nn.interceptors.batch_norm_in_train_mode`) and ReLU, then a ``1x1`` to 1."""

    widths: tuple[int, ...]
    norm: bool = True
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for w in self.widths:
            x = nn.Conv(w, (3, 3), padding=1, precision=self.precision)(x)
            if self.norm:
                x = nn.BatchNorm(use_running_average=True, epsilon=1e-5)(x)
            x = nn.relu(x)
        return nn.Conv(1, (1, 1), precision=self.precision)(x)[..., 0]


def pseudo_huber(x: jax.Array) -> jax.Array:
    """``sqrt(x^2 + 1) - 1`` elementwise, as ``x^2 / (sqrt(x^2 + 1) + 1)`` (no cancellation
    near 0 in float32)."""
    sq = jnp.square(x.astype(jnp.float32))
    return sq / (jnp.sqrt(sq + 1.0) + 1.0)


def hsc_loss(heat: jax.Array, labels: jax.Array) -> jax.Array:
    """Hypersphere-classifier loss of heatmaps ``A [B, h, w]`` with labels ``[B]`` (1 =
    anomalous): mean over samples of ``mean(A)`` or ``-log(1 - exp(-mean(A)) + 1e-31)``."""
    a = jnp.mean(heat, axis=(1, 2))
    anomalous = -jnp.log(1.0 - jnp.exp(-a) + 1e-31)
    return jnp.mean(jnp.where(labels > 0, anomalous, a))


def hsc_pixel_loss(heat: jax.Array, masks: jax.Array) -> jax.Array:
    """The code's ground-truth-map variant on upsampled ``A [B, H, W]`` and masks ``[B, H,
    W]``: ``mean(A (1 - m)) - log(1 - exp(-mean(A m)))``, the second term only for samples
    whose mask is not empty."""
    normal = jnp.mean(heat * (1 - masks), axis=(1, 2))
    a = jnp.mean(heat * masks, axis=(1, 2))
    anomalous = jnp.where(jnp.sum(masks, axis=(1, 2)) > 0,
                          -jnp.log(1.0 - jnp.exp(-a) + 1e-31), 0.0)
    return jnp.mean(normal + anomalous)


@register
@dataclasses.dataclass(frozen=True)
class FCDD(TrainedMethod):
    """FCDD with synthetic outlier exposure (see the module docstring).

    Attributes:
      backbone, tap, backbone_weights: the frozen pretrained part.
      head_widths: trainable ``3x3`` convolutions before the output layer.
      head_norm: BatchNorm after each of them (the code's VGG layers).
      learning_rate, momentum, weight_decay, lr_decay: SGD (Nesterov) and its decay factor.
      p_outlier: probability that a training sample is replaced by a malformed one.
      outlier: ``"confetti"`` (paper) or ``"mixed"`` (confetti, CutPaste, Perlin).
      supervision: ``"image"`` (the code's MVTec default) or ``"pixel"`` (ground-truth maps).
      gauss_std: the upsampling Gaussian's std at 224 px.
    """

    name: ClassVar[str] = "fcdd"
    default_epochs: ClassVar[int] = 200
    default_batch_size: ClassVar[int] = 128  # the code's MVTec 16 x 8 accumulated batches

    backbone: str = "efficientnet_lite0"
    tap: str = "stage3"
    backbone_weights: str | None = None
    head_widths: tuple[int, ...] = (128, 128)
    head_norm: bool = True
    learning_rate: float = hyper(1e-3, low=0.0, low_open=True)
    momentum: float = hyper(0.9, low=0.0, high=1.0)
    weight_decay: float = hyper(1e-4, low=0.0)
    lr_decay: float = hyper(0.985, low=0.0, high=1.0, low_open=True)
    p_outlier: float = hyper(0.5, low=0.0, high=1.0)
    outlier: str = hyper("confetti", choices=("confetti", "mixed"))
    supervision: str = hyper("image", choices=("image", "pixel"))
    gauss_std: float = hyper(12.0, low=0.0, low_open=True, high=224.0)

    @property
    def stride(self) -> int:
        return teacher(self.backbone).taps[self.tap].stride

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Frozen backbone variables up to ``tap``; a random head (``params`` and, with
        ``head_norm``, ``batch_stats``)."""
        check_images(self.name, images, multiple=self.stride)
        k_h = jax.random.split(key)[1]  # the head's key; the backbone is pretrained
        full = teacher_variables(self.backbone, self.backbone_weights)
        frozen = tap_variables(self.backbone, full, (self.tap,))
        dim = teacher(self.backbone).taps[self.tap].channels
        head = self._head().init(k_h, jnp.zeros((1, 8, 8, dim)))
        return {**head, "frozen": {"backbone": frozen}}

    def _head(self, precision: Any = None) -> Head:
        return Head(tuple(self.head_widths), self.head_norm, precision)

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """SGD, Nesterov momentum, coupled weight decay, rate decayed by ``lr_decay^200``
        over the run."""
        rate = self.lr_decay ** (self.default_epochs / max(total_steps, 1))
        schedule = optax.exponential_decay(self.learning_rate, 1, rate)
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.sgd(schedule, momentum=self.momentum, nesterov=True))

    def head_heatmap(self, params: Any, state: State, feats: jax.Array, train: bool = False,
                     precision: Any = None) -> tuple[jax.Array, Any]:
        """``(A = pseudo_huber(head(feats)) [B, h, w], batch_stats)`` of backbone features
        ``[B, h, w, C]``; in training BatchNorm uses the batch statistics and updates the
        running ones as PyTorch does (momentum 0.1, unbiased variance)."""
        variables = {"params": params, **({"batch_stats": state["batch_stats"]}
                                          if self.head_norm else {})}
        if train and self.head_norm:
            out, new = apply_with(self._head(precision), variables, feats,
                                  interceptors=[batch_norm_in_train_mode(0.9)],
                                  mutable=["batch_stats"])
            return pseudo_huber(out), new["batch_stats"]
        out = self._head(precision).apply(variables, feats)
        return pseudo_huber(out), state.get("batch_stats")

    def heatmap(self, params: Any, state: State, images: jax.Array, train: bool = False,
                precision: Any = None) -> tuple[jax.Array, Any]:
        """``(A [B, h, w], batch_stats)`` of images (see :meth:`head_heatmap`)."""
        feats = frozen_features(teacher(self.backbone), state["frozen"]["backbone"], images,
                                (self.tap,))[0]
        return self.head_heatmap(params, state, feats, train, precision)

    def outliers(self, key: jax.Array, images: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(images, labels [B], masks [B, H, W])``: each image replaced with probability
        ``p_outlier`` by a generated anomaly (jittable)."""
        b = images.shape[0]
        k_which, k_gen, k_kind = jax.random.split(key, 3)
        keys = jax.random.split(k_gen, b)
        made, masks = jax.vmap(confetti_noise)(keys, images)
        if self.outlier == "mixed":
            pasted, m_cp = jax.vmap(cutpaste)(keys, images)
            perlin, m_p, _ = jax.vmap(lambda k, x: draem_augment(k, x, jnp.roll(x, 7, 0), 1.0))(
                keys, images)
            kind = jax.random.randint(k_kind, (b,), 0, 3)
            pick = lambda a, c, p: jnp.where(  # noqa: E731
                (kind == 0).reshape(-1, *[1] * (a.ndim - 1)), a,
                jnp.where((kind == 1).reshape(-1, *[1] * (a.ndim - 1)), c, p))
            made, masks = pick(made, pasted, perlin), pick(masks, m_cp, m_p)
        replace = jax.random.bernoulli(k_which, self.p_outlier, (b,))
        out = jnp.where(replace[:, None, None, None], made, images)
        masks = masks * replace[:, None, None]
        return out, replace.astype(jnp.int32), masks

    def _upsample(self, heat: jax.Array, size: tuple[int, int]) -> jax.Array:
        std = self.gauss_std * min(size) / 224
        kernel = 2 * round(3 * std) + 1
        offset = round(self.stride / 2 - 0.5 - (kernel - 1) / 2)
        return receptive_upsample(heat, size, stride=self.stride, kernel=kernel, sigma=std,
                                  offset=offset)

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """HSC loss on a batch where about ``p_outlier`` of the images are made anomalous."""
        x, labels, masks = self.outliers(key, images)
        heat, stats = self.heatmap(params, state, x, train=True)
        if self.supervision == "image":
            value = hsc_loss(heat, labels)
        else:
            value = hsc_pixel_loss(self._upsample(heat, x.shape[1:3]), masks)
        a = jnp.mean(heat, axis=(1, 2))
        n_out = jnp.maximum(jnp.sum(labels), 1)
        aux = {"normal_score": jnp.sum(a * (1 - labels)) / jnp.maximum(jnp.sum(1 - labels), 1),
               "outlier_score": jnp.sum(a * labels) / n_out}
        if self.head_norm:
            aux["batch_stats"] = stats
        return value, aux

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map: receptive-field upsampled heatmap; image score: mean of the heatmap."""
        check_images(self.name, images, multiple=self.stride)
        heat, _ = self.heatmap(state["params"], state, images,
                               precision=jax.lax.Precision.HIGHEST)
        return Scores(image=jnp.mean(heat, axis=(1, 2)),
                      maps=self._upsample(heat, images.shape[1:3]))
