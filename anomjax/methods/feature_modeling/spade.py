"""SPADE: kNN retrieval of similar normal images, then dense kNN against their feature pyramid.

Cohen and Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020.

1. Image level: each image is described by its deepest backbone features, global-average
   pooled. A test image's ``K = 50`` nearest normal training images (Euclidean) are
   retrieved; its image anomaly score is the paper's kNN score, the mean distance to those
   ``K`` images (not the max of the map).
2. Pixel level: every position of the test image is described by the feature pyramid
   (several stages resized bilinearly to the finest stage's grid and concatenated); its
   score is the mean distance to its ``kappa = 1`` nearest features in the gallery made of
   all positions of the ``K`` retrieved images only. The map is upsampled bilinearly to the
   input size and smoothed with a Gaussian (sigma 4), as in the paper.

Backbones (``taps=()`` / ``image_tap=""`` pick the defaults):

* ResNet/WRN (the paper: WideResNet-50-2): pyramid ``layer1-3`` (strides 4/8/16), image
  features ``layer4`` pooled (the paper's pooled final features).
* EfficientNet-Lite (our default, a deviation from the paper): pyramid ``stage2``,
  ``stage3``, ``stage5`` (the last block groups at strides 4/8/16, 176 channels on Lite0),
  image features ``stage7`` pooled (320 channels on Lite0, the last stage before the
  classifier head).

``grid_stride`` (default: the finest tap's stride, 4, as in the paper) sets the pyramid's
grid; a coarser grid (8) is a documented speed/memory trade-off, not the paper's setting.

Memory: fitting stores the whole training pyramid, ``N * h * w * C`` numbers, in
``storage_dtype`` (float16 by default; the search widens it to float32 chunk by chunk). At
256 px input on Lite0 that is ``64 * 64 * 176 * 2`` bytes = 1.4 MB per training image
(about 580 MB for 400 images; a quarter of that with ``grid_stride=8``). Scoring one image
compares ``h * w`` queries with ``K * h * w`` gallery rows through
:func:`anomjax.nn.knn.nearest_neighbours`, whose distance blocks are bounded by
``max_block_mb``.
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
    check_images,
    load_variables,
)
from anomjax.methods.feature_modeling.padim import default_taps
from anomjax.methods.hyper import hyper
from anomjax.nn.knn import nearest_neighbours
from anomjax.nn.pyramid import concat_taps
from anomjax.scoring import to_scores
from anomjax.types import Batch, Scores


def default_image_tap(backbone: str) -> str:
    """Deepest stage of ``backbone`` (ResNet ``layer4``, EfficientNet-Lite ``stage7``)."""
    if backbone.startswith(("resnet", "wide_resnet")):
        return "layer4"
    if backbone.startswith("efficientnet_lite"):
        return "stage7"
    raise ValueError(f"no default SPADE image tap for backbone {backbone!r}; set image_tap=...")


@register
@dataclasses.dataclass(frozen=True)
class SPADE:
    """SPADE hyper-parameters (see the module docstring for the backbone mapping).

    Attributes:
      backbone: backbone name (:func:`anomjax.backbones.backbone_names`).
      backbone_weights: path of user weights, or ``None`` for the bundled/pretrained ones.
      taps: pyramid stages; ``()`` = strides 4/8/16 of the backbone.
      image_tap: stage pooled into the image descriptor; ``""`` = the deepest stage.
      image_neighbours: ``K``, normal images retrieved per test image (50 in the paper;
        capped at the number of training images).
      pixel_neighbours: ``kappa``, gallery features averaged per pixel (1 in the paper).
      grid_stride: input pixels per pyramid cell; ``0`` = the finest tap's stride (4, as in
        the paper). A coarser grid (e.g. 8) stores 4x less and searches 16x faster.
      storage_dtype: dtype of the stored training pyramid (``"float16"`` or ``"float32"``).
      sigma: Gaussian smoothing of the upsampled map, in pixels (4 in the paper).
      max_block_mb: bound on one float32 distance block of the pixel search, in MiB.
    """

    name: ClassVar[str] = "spade"
    kind: ClassVar[str] = "fit"

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ()
    image_tap: str = ""
    image_neighbours: int = 50
    pixel_neighbours: int = 1
    grid_stride: int = 0
    storage_dtype: str = "float16"
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    max_block_mb: int = 256

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
        ``image_features`` ``[N, C_img]`` float32 and ``pyramid`` ``[N, h, w, C]``."""
        if self.storage_dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(f"storage_dtype must be float16, bfloat16 or float32, "
                             f"got {self.storage_dtype!r}")
        if self.image_neighbours < 1 or self.pixel_neighbours < 1:
            raise ValueError("image_neighbours and pixel_neighbours must be at least 1")
        if self.grid_stride < 0:
            raise ValueError(f"grid_stride must be >= 0, got {self.grid_stride}")
        variables = load_variables(self.backbone, self.backbone_weights, key)
        descriptors, pyramids, shape = [], [], None
        for batch in batches:
            images = check_images(batch.images, batch.paths)
            if shape is None:
                shape = images.shape[1:]
            elif images.shape[1:] != shape:
                raise ValueError(f"training images must share one size: {batch.paths[0]} is "
                                 f"{images.shape[1:3]}, earlier images were {shape[:2]}")
            descriptor, pyramid = _describe(self, variables, images)
            descriptors.append(np.asarray(descriptor))
            pyramids.append(np.asarray(pyramid.astype(self.storage_dtype)))
        if not descriptors:
            raise ValueError("no training images: the batches were empty")
        return {"backbone": variables,
                "image_features": jnp.asarray(np.concatenate(descriptors)),
                "pyramid": jnp.asarray(np.concatenate(pyramids))}

    def describe(self, variables: State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Image descriptors ``[B, C_img]`` and feature pyramids ``[B, h, w, C]``."""
        extractor = get_backbone(self.backbone)
        taps = tuple(dict.fromkeys((*self.pyramid_taps, self.descriptor_tap)))
        features = extractor.features(variables, images, taps=taps)
        descriptor = jnp.mean(features[self.descriptor_tap].astype(jnp.float32), axis=(1, 2))
        size = None
        if self.grid_stride:
            size = (images.shape[1] // self.grid_stride, images.shape[2] // self.grid_stride)
        pyramid = concat_taps(features, self.pyramid_taps, size=size, method="bilinear")
        return descriptor, pyramid

    def score(self, state: State, images: jax.Array) -> Scores:
        """Anomaly maps ``[B, H, W]`` and image scores ``[B]`` (mean distance to K images)."""
        descriptor, pyramid = self.describe(state["backbone"], images)
        train_pyramid = state["pyramid"]
        if pyramid.shape[1:] != train_pyramid.shape[1:]:
            raise ValueError(f"test images give a {pyramid.shape[1:]} feature pyramid but the "
                             f"model was fitted on {train_pyramid.shape[1:]}: use the fit size")
        k_images = min(self.image_neighbours, train_pyramid.shape[0])
        image_dist, neighbours = nearest_neighbours(descriptor, state["image_features"],
                                                    k_images)
        image_score = jnp.mean(image_dist, axis=1)
        h, w, c = pyramid.shape[1:]
        max_block_bytes = self.max_block_mb * 2**20

        def pixel_scores(args: tuple[jax.Array, jax.Array]) -> jax.Array:
            queries, index = args  # [h, w, C], [K]
            gallery = jnp.take(train_pyramid, index, axis=0).reshape(-1, c)
            dist, _ = nearest_neighbours(queries.reshape(-1, c), gallery, self.pixel_neighbours,
                                         max_block_bytes=max_block_bytes)
            return jnp.mean(dist, axis=1).reshape(h, w)

        maps = jax.lax.map(pixel_scores, (pyramid, neighbours))
        return to_scores(maps, images.shape[1:3], self.sigma, image_score=image_score)


_describe = jax.jit(SPADE.describe, static_argnums=0)
