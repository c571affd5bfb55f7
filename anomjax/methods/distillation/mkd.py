"""MKD: multiresolution knowledge distillation (Salehi et al., "Multiresolution Knowledge
Distillation for Anomaly Detection", CVPR 2021).

A smaller "cloner" network is trained from scratch to imitate a frozen pretrained "source"
network at several intermediate layers. The loss per layer is a value term (mean squared
error) and a direction term (``1 - cos`` between the whole flattened feature maps of an image),
summed over the layers: ``L = sum_l L_val^l + lambda * L_dir^l``. The image score is that loss
on the deeper layers; localisation uses gradient attribution: the gradient of the image's loss
with respect to the input pixels (vanilla, SmoothGrad, or guided backpropagation through the
cloner's ReLUs), its absolute value summed over colour channels, smoothed by a Gaussian of
sigma 4.

Cloner: VGG-like blocks of 3x3 conv layers (BatchNorm + ReLU) ending in a 2x2 max-pool, 16
channels everywhere except the conv that ends each tapped block, which has the source tap's
channels (the authors' "smaller cloner" configuration). Adam, lr 1e-3 (authors' config).

Deviations: the paper's source network is VGG16 (the four max-pool outputs, strides 4-32), not
available offline; the default here is EfficientNet-Lite0 with taps ``stage2, stage3, stage5,
stage7`` (strides 4/8/16/32). Lite0's stage outputs are linear (they can be negative), so the
conv that produces a tapped feature has no ReLU (the next block applies it); with the ResNet
sources, whose taps are post-ReLU as VGG16's pools, it has one, as in the authors' cloner
(``cloner_tap_relu``, ``"auto"``). The paper's loss
is written ``L_val + lambda * L_dir``; the authors' code computes ``L_dir + 0.5 * L_val`` for
MVTec, which is the same objective up to a factor 2 (immaterial for Adam), so the default
here is ``lambda = 2`` (losses, gradients and image scores are twice the authors').

Maps: the authors normalise each attribution map per image before the blur
(``convert_to_grayscale``: ``clip((m - min) / (p99 - min), 0, 1)``, then a min-max that leaves
it unchanged); that is the default (``normalize_maps``). ``normalize_maps=False`` keeps the
raw attribution, so that pixel scores stay comparable across images.

Parity: ``tests/parity/test_parity_mkd.py`` compares the cloner, loss, gradients, one Adam
step, image scores, the guided-backpropagation attribution and the map with the authors' code
(ResNet-18 source, 128 px; ``experiments/parity/distillation.md``).

SmoothGrad follows the authors' ``generate_smooth_grad``: ``smooth_grad_samples`` (50) noisy
copies of each image, noise drawn with ``normal_(0, sigma ** 2)`` where ``sigma =
smooth_grad_noise / (max - min)`` of the image (0.05), i.e. a standard deviation of
``(0.05 / range) ** 2`` (0.0025 on a [0, 1] image: the code's value, 20 times smaller than
5 % of the range), and the average of the noisy copies' attribution maps.

Authors' settings kept as class defaults: 601 epochs (``default_epochs``, MVTec), batch size
128 (``default_batch_size``, the shipped config), 128 x 128 images
(``default_image_size``, the localisation code's; detection uses 224).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from anomjax.backbones import backbone_names
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.teacher import (
    check_taps,
    frozen_features,
    post_relu_taps,
    teacher,
    teacher_variables,
)
from anomjax.scoring import gaussian_blur
from anomjax.types import Scores

LOCALIZATIONS = ("gradients", "smooth_grad", "gbp")
BACKBONES = tuple(backbone_names())


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass keeps only positive gradients at positive inputs (guided
    backpropagation, Springenberg et al. 2015)."""
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where((x > 0) & (g > 0), g, 0.0),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


def normalize_attribution(maps: jax.Array) -> jax.Array:
    """The authors' per-image normalisation of ``[B, H, W]`` attribution maps
    (``convert_to_grayscale``): ``clip((m - min) / (p99 - min), 0, 1)`` with ``p99`` the 99th
    percentile (linear interpolation) of the image's map."""
    low = jnp.min(maps, axis=(1, 2), keepdims=True)
    high = jnp.percentile(maps, 99.0, axis=(1, 2), keepdims=True)
    return jnp.clip((maps - low) / jnp.maximum(high - low, 1e-12), 0.0, 1.0)


def smooth_grad_std(images: jax.Array, multiplier: float) -> jax.Array:
    """The authors' SmoothGrad noise std ``(multiplier / (max - min)) ** 2`` per image
    ``[B, 1, 1, 1]`` of ``images [B, H, W, C]``."""
    spread = (jnp.max(images, axis=(1, 2, 3), keepdims=True)
              - jnp.min(images, axis=(1, 2, 3), keepdims=True))
    return (multiplier / jnp.maximum(spread, 1e-6)) ** 2


class Cloner(nn.Module):
    """VGG-like cloner: ``[B, H, W, 3] -> [[B, H/s_l, W/s_l, c_l] for each tap l]``.

    ``tap_strides`` are powers of two ``>= 2`` in increasing order; block ``i`` (1-based)
    halves the resolution and has 2 convs for ``i <= 2`` and 3 after (as VGG16).
    ``tap_relu``: the conv that produces a tapped map is followed by a ReLU (the authors'
    cloner, for post-ReLU source taps); otherwise the tapped maps are linear.
    """

    tap_strides: tuple[int, ...]
    tap_channels: tuple[int, ...]
    width: int = 16
    guided: bool = False
    tap_relu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
        act = guided_relu if self.guided else nn.relu
        outs = []
        stride, block = 1, 0
        while stride < self.tap_strides[-1]:
            block += 1
            stride *= 2
            tapped = stride in self.tap_strides
            n_convs = 2 if block <= 2 else 3
            for j in range(n_convs):
                last = j == n_convs - 1
                width = self.tap_channels[self.tap_strides.index(stride)] if (
                    last and tapped) else self.width
                x = nn.Conv(width, (3, 3), padding=1, use_bias=False,
                            name=f"block{block}_conv{j}")(x)
                if not last:
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     epsilon=1e-5, name=f"block{block}_bn{j}")(x)
                if not (last and tapped) or self.tap_relu:
                    x = act(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            if tapped:
                outs.append(x)
                if not self.tap_relu:
                    x = act(x)
        return outs


def value_direction_loss(pred: Sequence[jax.Array], real: Sequence[jax.Array],
                         lamda: float) -> jax.Array:
    """Per-image ``sum_l mean((p_l - r_l)^2) + lamda * (1 - cos(flat p_l, flat r_l))`` ``[B]``."""
    total = 0.0
    for p, r in zip(pred, real, strict=True):
        p = p.reshape(p.shape[0], -1).astype(jnp.float32)
        r = r.reshape(r.shape[0], -1).astype(jnp.float32)
        value = jnp.mean((p - r) ** 2, axis=1)
        cos = jnp.sum(p * r, axis=1) / jnp.maximum(
            jnp.linalg.norm(p, axis=1) * jnp.linalg.norm(r, axis=1), 1e-8)
        total = total + value + lamda * (1.0 - cos)
    return total


@register
@dataclasses.dataclass(frozen=True)
class MKD(TrainedMethod):
    """Multiresolution knowledge distillation into a smaller cloner; gradient localisation.

    Attributes:
      backbone, backbone_weights: the frozen source network and optional weight file.
      taps: source layers distilled during training (strides: increasing powers of two).
      score_taps: how many of the deepest ``taps`` enter the image score and the attribution
        (authors: the last 3 of 4).
      cloner_width: channels of the cloner's untapped convs (authors: 16).
      lamda: weight of the direction term (see the module docstring for the factor 2).
      learning_rate: Adam learning rate (authors: 1e-3).
      localization: ``"gradients"``, ``"smooth_grad"`` or ``"gbp"`` (authors' default).
      smooth_grad_samples, smooth_grad_noise: SmoothGrad sample count and the authors'
        sigma multiplier (noise std ``(smooth_grad_noise / range) ** 2``, see above).
      sigma: Gaussian smoothing of the attribution map (paper: 4).
      sigma_side: image side at which the smoothing sigma holds (the authors' 128 px localisation
        images); other sizes scale it with their shorter side (0: pixels at every size).
      cloner_tap_relu: ``"on"``: a ReLU after the conv that produces each tapped map (authors;
        right for post-ReLU source taps), ``"off"``: linear tapped maps, ``"auto"``: on for the
        ResNet sources, off for the others.
      normalize_maps: the authors' per-image normalisation of the attribution before the blur.
    """

    name: ClassVar[str] = "mkd"
    default_epochs: ClassVar[int] = 601  # the authors' MVTec config
    default_batch_size: ClassVar[int] = 128  # the authors' config.yaml
    default_image_size: ClassVar[int] = 128  # the authors' localisation code

    backbone: str = hyper("efficientnet_lite0", choices=BACKBONES)
    backbone_weights: str | None = hyper(None)
    taps: tuple[str, ...] = hyper(("stage2", "stage3", "stage5", "stage7"))  # checked by init
    score_taps: int = hyper(3, low=1, high=16)
    cloner_width: int = hyper(16, low=1, high=4096)
    lamda: float = hyper(2.0, low=0.0, high=1e3)
    learning_rate: float = hyper(1e-3, low=0.0, high=1.0, low_open=True)
    localization: str = hyper("gbp", choices=LOCALIZATIONS)
    smooth_grad_samples: int = hyper(50, low=1, high=1000)
    smooth_grad_noise: float = hyper(0.05, low=0.0, high=1.0)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(128, low=0)
    cloner_tap_relu: str = hyper("auto", choices=("auto", "on", "off"))
    normalize_maps: bool = hyper(True)

    @property
    def tap_relu(self) -> bool:
        """Whether the cloner's tapped maps end in a ReLU (``cloner_tap_relu``, or by
        backbone: on for the ResNets, whose taps are post-ReLU as VGG16's)."""
        return post_relu_taps(self.cloner_tap_relu, self.backbone)

    def _teacher(self) -> Any:
        check_taps(self.name, self.backbone, self.taps)
        backbone = teacher(self.backbone)
        strides = [backbone.taps[t].stride for t in self.taps]
        if any(s < 2 or s & (s - 1) for s in strides) or strides != sorted(set(strides)):
            raise ValueError(f"mkd taps {self.taps} have strides {strides}; they must be "
                             "distinct powers of two >= 2 in increasing order")
        if not 1 <= self.score_taps <= len(self.taps):
            raise ValueError(f"mkd score_taps must be in 1..{len(self.taps)}, "
                             f"got {self.score_taps}")
        if self.localization not in LOCALIZATIONS:
            raise ValueError(f"mkd localization must be one of {LOCALIZATIONS}, "
                             f"got {self.localization!r}")
        return backbone

    def _cloner(self, backbone: Any, guided: bool = False) -> Cloner:
        return Cloner(tuple(backbone.taps[t].stride for t in self.taps),
                      tuple(backbone.taps[t].channels for t in self.taps), self.cloner_width,
                      guided, self.tap_relu)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Source variables (frozen) and a freshly initialised cloner."""
        backbone = self._teacher()
        check_images(self.name, images, multiple=backbone.taps[self.taps[-1]].stride,
                     why=f"the stride of tap {self.taps[-1]}")
        variables = self._cloner(backbone).init(key, jnp.asarray(images[:1]), train=False)
        return {"params": variables["params"], "batch_stats": variables["batch_stats"],
                "frozen": {"teacher": teacher_variables(self.backbone,
                                                        self.backbone_weights)}}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam with the authors' learning rate (constant)."""
        del total_steps
        return optax.adam(self.learning_rate)

    def frozen_features(self, state: State, images: jax.Array) -> list[jax.Array]:
        """The frozen source network's features ``[B, h, w, c]`` per tap, shallow first (a
        function of the image alone, so the training engine computes them once per training
        image: ``anomjax.train.frozen_cache``)."""
        return frozen_features(self._teacher(), state["frozen"]["teacher"], images, self.taps)

    def _image_losses(self, params: Any, state: State, images: jax.Array, taps: int,
                      train: bool = False, guided: bool = False,
                      real: list[jax.Array] | None = None) -> tuple[jax.Array, Any]:
        """Per-image loss ``[B]`` over the deepest ``taps`` layers, and the batch stats;
        ``real``: the source's features of ``images`` if already computed."""
        backbone = self._teacher()
        real = self.frozen_features(state, images) if real is None else real
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        cloner = self._cloner(backbone, guided)
        if train:
            pred, updates = cloner.apply(variables, images, train=True, mutable=["batch_stats"])
            stats = updates["batch_stats"]
        else:
            pred, stats = cloner.apply(variables, images, train=False), state["batch_stats"]
        start = len(self.taps) - taps
        return value_direction_loss(pred[start:], real[start:], self.lamda), stats

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: list[jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Value + direction distillation loss over all taps, averaged over the batch;
        ``frozen``: the source's features of ``images`` when the engine cached them."""
        del key
        losses, stats = self._image_losses(params, state, images, len(self.taps), train=True,
                                           real=frozen)
        return jnp.mean(losses), {"batch_stats": stats}

    def _input_gradients(self, state: State, images: jax.Array, guided: bool) -> jax.Array:
        """Gradient of each image's score loss with respect to its pixels ``[B, H, W, 3]``
        (images are independent in eval mode, so the gradient of the sum is per image)."""
        def total(x: jax.Array) -> jax.Array:
            losses, _ = self._image_losses(state["params"], state, x, self.score_taps,
                                           guided=guided)
            return jnp.sum(losses)

        return jax.grad(total)(images)

    def attribution(self, state: State, images: jax.Array,
                    key: jax.Array | None = None) -> jax.Array:
        """Unsmoothed attribution ``[B, H, W]``: ``sum_c |gradient|`` by ``localization``."""
        images = images.astype(jnp.float32)
        if self.localization != "smooth_grad":
            grads = self._input_gradients(state, images, self.localization == "gbp")
            return jnp.sum(jnp.abs(grads), axis=-1)
        key = jax.random.PRNGKey(0) if key is None else key
        std = smooth_grad_std(images, self.smooth_grad_noise)

        def one(k: jax.Array) -> jax.Array:
            noise = jax.random.normal(k, images.shape) * std
            grads = self._input_gradients(state, images + noise, guided=False)
            return jnp.sum(jnp.abs(grads), axis=-1)

        keys = jax.random.split(key, self.smooth_grad_samples)
        return jnp.mean(jax.lax.map(one, keys), axis=0)

    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score = distillation loss on the ``score_taps`` deepest layers; map =
        Gaussian-smoothed gradient attribution (deterministic: SmoothGrad uses a fixed key)."""
        losses, _ = self._image_losses(state["params"], state, images, self.score_taps)
        attribution = self.attribution(state, images)
        if self.normalize_maps:
            attribution = normalize_attribution(attribution)
        maps = gaussian_blur(attribution, self.sigma, self.sigma_side)
        return Scores(image=losses.astype(jnp.float32), maps=maps)
