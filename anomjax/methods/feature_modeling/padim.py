"""PaDiM: a Gaussian per patch position over pretrained multi-scale features.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021. Every patch is described by three consecutive backbone stages
concatenated at the first one's resolution (nearest upsampling, as the paper's code does),
reduced to ``d`` randomly chosen channels. For every spatial position a Gaussian
``N(mu, Sigma + 0.01 I)`` is fitted on the normal training images; a test patch scores its
Mahalanobis distance, the map is upsampled bilinearly to the input size, smoothed with a
Gaussian (sigma 4) and the image score is the map's maximum.

Backbones and their defaults (``taps=()`` and ``n_features=0`` pick them):

* ResNet18: ``layer1-3`` (strides 4/8/16, 448 channels), ``d = 100`` (the paper).
* WideResNet-50-2: ``layer1-3`` (1792 channels), ``d = 550`` (the paper).
* EfficientNet-Lite (our default backbone, a deviation from the paper): ``stage2``,
  ``stage3``, ``stage5``, the last block group at each of ResNet ``layer1-3``'s strides
  (4/8/16; 24+40+112 = 176 channels on Lite0), as timm's feature pyramid and anomalib's
  Lite0 PaDiM take them. ``d`` keeps the paper's WRN50 proportion, ``round(176 * 550 /
  1792) = 54`` on Lite0 (anomalib's Lite0 run uses 100: ``n_features=100`` matches it).

Memory: the fitted state holds ``h * w * d * (d + 1)`` float32 numbers (64 x 64 positions
and ``d = 54`` at 256 px input: 49 MB) besides the backbone; fitting streams the training
images batch by batch (:mod:`anomjax.nn.gaussian`), so it does not grow with their number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import ClassVar

import jax
import jax.numpy as jnp

from anomjax.backbones import get_backbone
from anomjax.methods.base import State, register
from anomjax.methods.feature_modeling.frozen_backbone import (
    check_images,
    load_variables,
)
from anomjax.methods.hyper import hyper
from anomjax.nn import gaussian
from anomjax.nn.pyramid import concat_taps
from anomjax.scoring import to_scores
from anomjax.types import Batch, Scores

PAPER_FEATURE_DIMS = {"resnet18": 100, "wide_resnet50_2": 550}
"""``d`` used in the PaDiM paper for its two backbones."""

WRN50_RATIO = 550 / 1792
"""Fraction of channels kept on WRN50 in the paper; applied to other backbones."""


def default_taps(backbone: str) -> tuple[str, str, str]:
    """Last stages at strides 4/8/16 (ResNet ``layer1-3``, Lite ``stage2``/``3``/``5``)."""
    if backbone.startswith(("resnet", "wide_resnet")):
        return ("layer1", "layer2", "layer3")
    if backbone.startswith("efficientnet_lite"):
        return ("stage2", "stage3", "stage5")
    raise ValueError(f"no default PaDiM taps for backbone {backbone!r}; set taps=...")


def default_feature_dim(backbone: str, total_channels: int) -> int:
    """The paper's ``d`` for ResNet18/WRN50, else the WRN50 proportion of ``total_channels``."""
    if backbone in PAPER_FEATURE_DIMS:
        return PAPER_FEATURE_DIMS[backbone]
    return max(1, round(total_channels * WRN50_RATIO))


def random_channel_index(key: jax.Array, total: int, d: int) -> jax.Array:
    """``d`` distinct channel indices ``[d]`` int32 in ``[0, total)``, sorted."""
    if not 0 < d <= total:
        raise ValueError(f"cannot pick {d} channels out of {total}")
    return jnp.sort(jax.random.choice(key, total, (d,), replace=False)).astype(jnp.int32)


def fit_gaussians(embed, batches: Iterable[Batch], epsilon: float) -> gaussian.Gaussian:
    """Stream ``batches`` through ``embed`` (images -> ``[B, h, w, d]``) into Gaussians."""
    stats, shape = None, None
    for batch in batches:
        images = check_images(batch.images, batch.paths)
        if shape is None:
            shape = images.shape[1:]
        elif images.shape[1:] != shape:
            raise ValueError(f"training images must share one size: {batch.paths[0]} is "
                             f"{images.shape[1:3]}, earlier images were {shape[:2]}")
        features = embed(images)
        if stats is None:
            stats = gaussian.init_stats(features.shape[1:3], features.shape[3])
        stats = gaussian.update_stats(stats, features)
    if stats is None:
        raise ValueError("no training images: the batches were empty")
    return gaussian.finalize(stats, epsilon)


def gaussian_scores(fitted: gaussian.Gaussian, features: jax.Array, size: tuple[int, int],
                    sigma: float) -> Scores:
    """Mahalanobis maps of ``features`` ``[B, h, w, d]`` upsampled to ``size`` and smoothed."""
    if features.shape[1:3] != fitted["mean"].shape[:2]:
        raise ValueError(f"test images give a {features.shape[1:3]} feature grid but the model "
                         f"was fitted on {fitted['mean'].shape[:2]}: use the fit image size")
    return to_scores(gaussian.mahalanobis(fitted, features), size, sigma)


@register
@dataclasses.dataclass(frozen=True)
class PaDiM:
    """PaDiM hyper-parameters (see the module docstring for the backbone mapping).

    Attributes:
      backbone: backbone name (:func:`anomjax.backbones.backbone_names`).
      backbone_weights: path of user weights, or ``None`` for the bundled/pretrained ones.
      taps: three stages to concatenate; ``()`` = :func:`default_taps` of the backbone.
      n_features: random channel subset size ``d``; ``0`` = :func:`default_feature_dim`.
      epsilon: ridge added to every covariance (0.01 in the paper).
      sigma: Gaussian smoothing of the upsampled map, in pixels (4 in the paper).
    """

    name: ClassVar[str] = "padim"
    kind: ClassVar[str] = "fit"

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ()
    n_features: int = 0
    epsilon: float = 0.01
    sigma: float = hyper(4.0, low=0.0, high=64.0)

    @property
    def feature_taps(self) -> tuple[str, ...]:
        """The taps actually used."""
        return tuple(self.taps) or default_taps(self.backbone)

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        """Fit the per-position Gaussians; state holds ``backbone``, ``channel_index``,
        ``mean`` ``[h, w, d]`` and ``chol`` ``[h, w, d, d]``."""
        key_backbone, key_channels = jax.random.split(key)
        variables = load_variables(self.backbone, self.backbone_weights, key_backbone)
        extractor = get_backbone(self.backbone)
        total = sum(extractor.taps[t].channels for t in self.feature_taps)
        d = self.n_features or default_feature_dim(self.backbone, total)
        index = random_channel_index(key_channels, total, d)
        fitted = fit_gaussians(lambda images: _embed(self, variables, index, images), batches,
                               self.epsilon)
        return {"backbone": variables, "channel_index": index, **fitted}

    def embed(self, variables: State, channel_index: jax.Array, images: jax.Array) -> jax.Array:
        """Patch embeddings ``[B, h, w, d]`` of images ``[B, H, W, 3]``."""
        extractor = get_backbone(self.backbone)
        features = extractor.features(variables, images, taps=self.feature_taps)
        return jnp.take(concat_taps(features, self.feature_taps), channel_index, axis=-1)

    def score(self, state: State, images: jax.Array) -> Scores:
        """Anomaly maps ``[B, H, W]`` and image scores ``[B]`` (max of the map)."""
        features = self.embed(state["backbone"], state["channel_index"], images)
        fitted = {"mean": state["mean"], "chol": state["chol"]}
        return gaussian_scores(fitted, features, images.shape[1:3], self.sigma)


_embed = jax.jit(PaDiM.embed, static_argnums=0)
