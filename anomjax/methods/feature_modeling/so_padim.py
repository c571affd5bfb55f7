"""Semi-orthogonal PaDiM: PaDiM with a random semi-orthogonal embedding of the features.

Kim, Kim, Yi and Lee, "Semi-orthogonal Embedding for Efficient Unsupervised Anomaly
Segmentation", 2021. Instead of keeping ``d`` random channels, the full concatenated patch
feature ``x`` (``F`` channels) is projected to ``k`` dimensions as ``W^T x`` with a random
semi-orthogonal ``W`` ``[F, k]`` (``W^T W = I_k``), taken as the ``Q`` factor of the QR
decomposition of an ``F x k`` standard-normal matrix (uniform on the Stiefel manifold). One
``W`` is shared by all positions. A Gaussian per position with covariance + 0.01 I,
Mahalanobis distance, bilinear upsampling, Gaussian smoothing (sigma 4) and max image
score follow as in PaDiM (:mod:`anomjax.methods.feature_modeling.padim`).

Backbones and their defaults (``taps=()`` and ``k=0`` pick them):

* ResNet18: ``layer1-3`` (448 channels), ``k = 100`` (the paper).
* WideResNet-50-2: ``layer1-3`` (1792 channels), ``k = 300`` (the paper).
* EfficientNet-Lite (our default, a deviation from the paper): PaDiM's ``stage2``,
  ``stage3``, ``stage5`` (strides 4/8/16, 176 channels on Lite0); ``k`` keeps the paper's
  WRN50 proportion, ``round(176 * 300 / 1792) = 29`` on Lite0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import ClassVar

import jax
import jax.numpy as jnp

from anomjax.backbones import get_backbone
from anomjax.methods.base import State, register
from anomjax.methods.feature_modeling.frozen_backbone import load_variables
from anomjax.methods.feature_modeling.padim import default_taps, fit_gaussians, gaussian_scores
from anomjax.methods.hyper import hyper
from anomjax.nn.pyramid import concat_taps
from anomjax.types import Batch, Scores

PAPER_EMBEDDING_DIMS = {"resnet18": 100, "wide_resnet50_2": 300}
"""``k`` used in the semi-orthogonal embedding paper for its two backbones."""

WRN50_RATIO = 300 / 1792
"""Fraction ``k / F`` of the paper's WRN50 setting; applied to other backbones."""


def default_embedding_dim(backbone: str, total_channels: int) -> int:
    """The paper's ``k`` for ResNet18/WRN50, else the WRN50 proportion of ``total_channels``."""
    if backbone in PAPER_EMBEDDING_DIMS:
        return PAPER_EMBEDDING_DIMS[backbone]
    return max(1, round(total_channels * WRN50_RATIO))


def semi_orthogonal_matrix(key: jax.Array, rows: int, cols: int) -> jax.Array:
    """Random ``[rows, cols]`` matrix with orthonormal columns (``W^T W = I``), ``cols <= rows``.

    The ``Q`` factor of a standard-normal matrix, with column signs fixed by ``R``'s diagonal
    so that ``W`` is Haar-distributed rather than biased by the QR sign convention.
    """
    if not 0 < cols <= rows:
        raise ValueError(f"a semi-orthogonal [{rows}, {cols}] embedding needs 0 < k <= {rows}")
    q, r = jnp.linalg.qr(jax.random.normal(key, (rows, cols), jnp.float32))
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)


@register
@dataclasses.dataclass(frozen=True)
class SemiOrthogonalPaDiM:
    """Semi-orthogonal PaDiM hyper-parameters (backbone mapping in the module docstring).

    Attributes:
      backbone: backbone name (:func:`anomjax.backbones.backbone_names`).
      backbone_weights: path of user weights, or ``None`` for the bundled/pretrained ones.
      taps: stages to concatenate; ``()`` = PaDiM's default taps for the backbone.
      k: embedding dimension; ``0`` = :func:`default_embedding_dim`.
      epsilon: ridge added to every covariance (0.01, as in PaDiM).
      sigma: Gaussian smoothing of the upsampled map, in pixels (4).
    """

    name: ClassVar[str] = "so_padim"
    kind: ClassVar[str] = "fit"

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ()
    k: int = 0
    epsilon: float = 0.01
    sigma: float = hyper(4.0, low=0.0, high=64.0)

    @property
    def feature_taps(self) -> tuple[str, ...]:
        """The taps actually used."""
        return tuple(self.taps) or default_taps(self.backbone)

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        """Fit the per-position Gaussians of the embedded features; state holds ``backbone``,
        ``embedding`` ``[F, k]``, ``mean`` ``[h, w, k]`` and ``chol`` ``[h, w, k, k]``."""
        key_backbone, key_embedding = jax.random.split(key)
        variables = load_variables(self.backbone, self.backbone_weights, key_backbone)
        extractor = get_backbone(self.backbone)
        total = sum(extractor.taps[t].channels for t in self.feature_taps)
        k = self.k or default_embedding_dim(self.backbone, total)
        embedding = semi_orthogonal_matrix(key_embedding, total, k)
        fitted = fit_gaussians(lambda images: _embed(self, variables, embedding, images),
                               batches, self.epsilon)
        return {"backbone": variables, "embedding": embedding, **fitted}

    def embed(self, variables: State, embedding: jax.Array, images: jax.Array) -> jax.Array:
        """Embedded patch features ``W^T x`` ``[B, h, w, k]`` of images ``[B, H, W, 3]``."""
        extractor = get_backbone(self.backbone)
        features = extractor.features(variables, images, taps=self.feature_taps)
        return jnp.einsum("bhwf,fk->bhwk", concat_taps(features, self.feature_taps), embedding,
                          precision=jax.lax.Precision.HIGHEST)

    def score(self, state: State, images: jax.Array) -> Scores:
        """Anomaly maps ``[B, H, W]`` and image scores ``[B]`` (max of the map)."""
        features = self.embed(state["backbone"], state["embedding"], images)
        fitted = {"mean": state["mean"], "chol": state["chol"]}
        return gaussian_scores(fitted, features, images.shape[1:3], self.sigma)


_embed = jax.jit(SemiOrthogonalPaDiM.embed, static_argnums=0)
