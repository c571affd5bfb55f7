"""SPADE: kNN retrieval of similar normal images, then dense kNN against their feature pyramid.

Cohen and Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020.

1. Image level: each image is described by the global average of its final backbone
   features. A test image's ``K = 50`` nearest normal training images (Euclidean) are
   retrieved; its image anomaly score is the paper's kNN score, the mean distance to those
   ``K`` images (not the max of the map).
2. Pixel level: every position of the test image is compared with the gallery made of all
   positions of the ``K`` retrieved images only; a position scores the mean distance to its
   ``kappa = 1`` nearest gallery features. Two readings of "the feature pyramid"
   (``pyramid``):

   * ``"per_layer"`` (default; the widely used reference code, byungjae89/SPADE-pytorch):
     one nearest-neighbour map per pyramid layer, each at that layer's own resolution,
     every map upsampled bilinearly to the input size, and the maps averaged.
   * ``"concatenated"``: the layers resized bilinearly to the finest layer's grid and
     concatenated into one descriptor per position, matched jointly (one correspondence
     across scales; layers weighted by their share of the squared norm).

   The map is smoothed with a Gaussian (sigma 4), as in the paper.

Backbones (``taps=()`` / ``image_tap=""`` pick the defaults):

* ResNet/WRN (the paper: WideResNet-50-2): pyramid ``layer1-3`` (strides 4/8/16), image
  features ``layer4`` pooled (the classifier's average-pooled input, as in the paper).
* EfficientNet-Lite (our default, a deviation from the paper): pyramid ``stage2``,
  ``stage3``, ``stage5`` (the last block groups at strides 4/8/16, 176 channels on Lite0),
  image features the pooled ``head`` (1x1 conv to 1280 channels, BN, ReLU6: the
  classifier's input, the role of ResNet's pooled ``layer4``); ``image_tap="stage7"``
  (320 channels, before the head) was the earlier default.

``grid_stride`` (default 0: the layers' own strides, 4 at the finest, as in the paper) caps
the resolution: layers finer than it are resized (bilinear, antialiased) to the
``grid_stride`` grid, a documented speed/memory trade-off, not the paper's setting.

Memory: fitting stores every training image's pyramid, in ``storage_dtype`` (float16 by
default; the search widens it to float32 chunk by chunk). At 256 px input on Lite0 the
finest layer alone is ``64 * 64 * 24 * 2`` bytes (``per_layer``; 0.26 MB per image, 0.31 MB
with the coarser layers) or ``64 * 64 * 176 * 2`` bytes (``concatenated``; 1.4 MB). Scoring
one image compares its positions with the ``K`` retrieved images' positions through
:func:`anomjax.nn.knn.nearest_neighbours` (full float32 precision), whose distance blocks
are bounded by ``max_block_mb``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.backbones import get_backbone
from anomjax.methods.base import State, register
from anomjax.methods.feature_modeling.frozen_backbone import (
    BACKBONES,
    check_taps,
    load_variables,
    same_size_images,
)
from anomjax.methods.feature_modeling.padim import default_taps
from anomjax.methods.hyper import hyper
from anomjax.methods.protocol import FittedMethod
from anomjax.nn.knn import nearest_neighbours
from anomjax.nn.pyramid import concat_taps
from anomjax.scoring import to_scores, upsample
from anomjax.types import Batch, Scores

PYRAMIDS = ("per_layer", "concatenated")


def default_image_tap(backbone: str) -> str:
    """Final features of ``backbone`` (ResNet ``layer4``, EfficientNet-Lite ``head``)."""
    if backbone.startswith(("resnet", "wide_resnet")):
        return "layer4"
    if backbone.startswith("efficientnet_lite"):
        return "head"
    raise ValueError(f"no default SPADE image tap for backbone {backbone!r}; set image_tap=...")


def gallery_distances(queries: jax.Array, train: jax.Array, neighbours: jax.Array,
                      kappa: int, max_block_bytes: int) -> jax.Array:
    """Mean distance ``[B, h, w]`` of every query position to its ``kappa`` nearest features
    among all positions of its retrieved training images.

    Args:
      queries: ``[B, h, w, C]`` test features.
      train: ``[N, h, w, C]`` training features (any float dtype).
      neighbours: ``[B, K]`` indices of each test image's retrieved training images.
    """
    h, w, c = queries.shape[1:]

    def one(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        q, index = args  # [h, w, C], [K]
        gallery = jnp.take(train, index, axis=0).reshape(-1, c)
        dist, _ = nearest_neighbours(q.reshape(-1, c), gallery, kappa,
                                     max_block_bytes=max_block_bytes)
        return jnp.mean(dist, axis=1).reshape(h, w)

    return jax.lax.map(one, (queries, neighbours))


@register
@dataclasses.dataclass(frozen=True)
class SPADE(FittedMethod):
    """SPADE hyper-parameters (see the module docstring for the backbone mapping).

    Attributes:
      backbone, backbone_weights: backbone name (:func:`anomjax.backbones.backbone_names`)
        and a path of user weights (``None``: the bundled or pretrained ones).
      taps: pyramid stages, fine to coarse; ``()`` = strides 4/8/16 of the backbone.
      image_tap: stage pooled into the image descriptor; ``""`` = :func:`default_image_tap`.
      pyramid: ``"per_layer"`` (reference code) or ``"concatenated"`` (one joint descriptor).
      image_neighbours: ``K``, normal images retrieved per test image (50 in the paper;
        capped at the number of training images).
      pixel_neighbours: ``kappa``, gallery features averaged per pixel (1 in the paper).
      grid_stride: finest grid, in input pixels per cell; ``0`` = the layers' own (4 at the
        finest, as in the paper). A coarser grid (e.g. 8) stores and searches less.
      storage_dtype: dtype of the stored training pyramid (float16, bfloat16 or float32).
      sigma: Gaussian smoothing of the upsampled map, in pixels (4 in the paper).
      sigma_side: image side at which the smoothing sigma holds (the reference's 224 px crops);
        other sizes scale it with their shorter side (0: pixels at every size).
      max_block_mb: bound on one float32 distance block of the pixel search, in MiB.
    """

    name: ClassVar[str] = "spade"

    backbone: str = hyper("efficientnet_lite0", choices=BACKBONES)
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ()
    image_tap: str = ""
    pyramid: str = hyper("per_layer", choices=PYRAMIDS)
    image_neighbours: int = hyper(50, low=1, high=100000)
    pixel_neighbours: int = hyper(1, low=1, high=1024)
    grid_stride: int = hyper(0, low=0, high=256)
    storage_dtype: str = hyper("float16", choices=("float16", "bfloat16", "float32"))
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(224, low=0)
    max_block_mb: int = hyper(256, low=1, high=65536)

    def __post_init__(self) -> None:
        if self.taps:
            check_taps("spade", self.backbone, self.taps)
        if self.image_tap:
            check_taps("spade", self.backbone, (self.image_tap,), field="image_tap")

    @property
    def pyramid_taps(self) -> tuple[str, ...]:
        """The pyramid taps actually used."""
        return tuple(self.taps) or default_taps(self.backbone)

    @property
    def descriptor_tap(self) -> str:
        """The image-descriptor tap actually used."""
        return self.image_tap or default_image_tap(self.backbone)

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        """Store the training images' descriptors and pyramids; state holds ``backbone``,
        ``image_features`` ``[N, C_img]`` float32 and ``pyramid``: ``{tap: [N, h_l, w_l,
        C_l]}`` (``per_layer``) or ``[N, h, w, C]`` (``concatenated``)."""
        variables = load_variables(self.backbone, self.backbone_weights, key)
        descriptors, pyramids = [], []
        for images in same_size_images(batches):
            descriptor, pyramid = _describe(self, variables, images)
            descriptors.append(np.asarray(descriptor))
            pyramids.append(jax.tree.map(lambda x: np.asarray(x.astype(self.storage_dtype)),
                                         pyramid))
        if not descriptors:
            raise ValueError("no training images: the batches were empty")
        stacked = jax.tree.map(lambda *parts: jnp.asarray(np.concatenate(parts)), *pyramids)
        return {"backbone": variables,
                "image_features": jnp.asarray(np.concatenate(descriptors)),
                "pyramid": stacked}

    def describe(self, variables: State, images: jax.Array
                 ) -> tuple[jax.Array, jax.Array | dict[str, jax.Array]]:
        """Image descriptors ``[B, C_img]`` and the pyramid (as stored by :meth:`fit`)."""
        extractor = get_backbone(self.backbone)
        taps = tuple(dict.fromkeys((*self.pyramid_taps, self.descriptor_tap)))
        features = extractor.features(variables, images, taps=taps)
        descriptor = jnp.mean(features[self.descriptor_tap].astype(jnp.float32), axis=(1, 2))
        size = None
        if self.grid_stride:
            size = (images.shape[1] // self.grid_stride, images.shape[2] // self.grid_stride)
        if self.pyramid == "concatenated":
            return descriptor, concat_taps(features, self.pyramid_taps, size=size,
                                           method="bilinear")
        layers = {}
        for tap in self.pyramid_taps:
            x = features[tap].astype(jnp.float32)
            if size is not None and extractor.taps[tap].stride < self.grid_stride:
                x = jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear")
            layers[tap] = x
        return descriptor, layers

    def score(self, state: State, images: jax.Array) -> Scores:
        """Anomaly maps ``[B, H, W]`` and image scores ``[B]`` (mean distance to K images)."""
        descriptor, pyramid = self.describe(state["backbone"], images)
        train = state["pyramid"]
        got = jax.tree.map(lambda x: x.shape[1:], pyramid)
        fitted = jax.tree.map(lambda x: x.shape[1:], train)
        if got != fitted:
            raise ValueError(f"test images give a {got} feature pyramid but the model was "
                             f"fitted on {fitted}: use the fit size (and the same pyramid)")
        k_images = min(self.image_neighbours, state["image_features"].shape[0])
        image_dist, neighbours = nearest_neighbours(descriptor, state["image_features"],
                                                    k_images)
        image_score = jnp.mean(image_dist, axis=1)
        block = self.max_block_mb * 2**20
        size = images.shape[1:3]
        if self.pyramid == "concatenated":
            maps = gallery_distances(pyramid, train, neighbours, self.pixel_neighbours, block)
            return to_scores(maps, size, self.sigma, sigma_side=self.sigma_side,
                         image_score=image_score)
        maps = [upsample(gallery_distances(pyramid[t], train[t], neighbours,
                                           self.pixel_neighbours, block), size)
                for t in self.pyramid_taps]
        return to_scores(jnp.mean(jnp.stack(maps), axis=0), size, self.sigma,
                         sigma_side=self.sigma_side,
                         image_score=image_score)


_describe = jax.jit(SPADE.describe, static_argnums=0)
