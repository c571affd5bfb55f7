"""PaDiM: a Gaussian per patch position over pretrained multi-scale features.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021; and its semi-orthogonal variant, Kim, Kim, Yi and Lee,
"Semi-orthogonal Embedding for Efficient Unsupervised Anomaly Segmentation", 2021.

Every patch is described by three consecutive backbone stages concatenated at the first
one's resolution (nearest upsampling, as the paper's code does: every coarse cell is copied
over the fine cells it covers), ``F`` channels, projected to ``d`` dimensions. For every
spatial position a Gaussian ``N(mu, Sigma + 0.01 I)`` is fitted on the normal training
images; a test patch scores its Mahalanobis distance, the map is upsampled bilinearly to the
input size, smoothed with a Gaussian (sigma 4) and the image score is the map's maximum.

The projection is the one difference between the two registered methods:

* ``padim`` (:class:`PaDiM`): ``d`` channels chosen at random, one subset for all positions
  (state ``channel_index`` ``[d]``).
* ``so_padim`` (:class:`SemiOrthogonalPaDiM`): ``W^T x`` with a random semi-orthogonal ``W``
  ``[F, k]`` (``W^T W = I_k``), the ``Q`` factor of the QR decomposition of an ``F x k``
  standard-normal matrix with its column signs fixed by ``R``'s diagonal (Haar-distributed);
  one ``W`` for all positions (state ``embedding`` ``[F, k]``). Adding ``0.01 I`` after the
  embedding equals ``W^T (Sigma + 0.01 I) W``.

Backbones and their defaults (``taps=()`` and ``n_features=0`` / ``k=0`` pick them):

* ResNet18: ``layer1-3`` (strides 4/8/16, 448 channels), ``d = 100``, ``k = 100`` (papers).
* WideResNet-50-2: ``layer1-3`` (1792 channels), ``d = 550``, ``k = 300`` (papers).
* EfficientNet-Lite (our default backbone, a deviation from the papers): ``stage2``,
  ``stage3``, ``stage5``, the last block group at each of ResNet ``layer1-3``'s strides
  (4/8/16; 24+40+112 = 176 channels on Lite0), as timm's feature pyramid and anomalib's
  Lite0 PaDiM take them. ``d`` = all of their channels (176 on Lite0; the earlier default,
  the WRN50 proportion, was 54, and anomalib's Lite0 setting is 100), chosen by measurement
  on mvtec3d_tire at 256 px (``experiments/bench_vs_anomalib.py --padim-dims 54,100,176``,
  seed 0): all 176 channels localised best, for anomalib 2.7 on that folder too (measured:
  ``experiments/method_notes.md#padim``). With so few channels the reduction the paper
  needs for WRN50's 1792 buys little. ``k`` keeps the semi-orthogonal paper's WRN50 proportion,
  ``round(176 * 300 / 1792) = 29`` on Lite0.

At ``d = 176`` the 210 training images of that folder give near-singular covariances, and
the scores feel half a grey level of input rounding: resizing the 8-bit image (the default
reader, as the authors' PIL pipeline) or its floats (``open_dataset(resize_dtype=
"float32")``, as anomalib) changes the metrics by a few points. Read as anomalib reads,
the maps match anomalib's (measured: ``experiments/method_notes.md#padim``,
``experiments/vs_anomalib_tire.md``).

Memory: the fitted state holds ``h * w * d * (d + 1)`` float32 numbers (64 x 64 positions
and ``d = 176`` at 256 px input: 510 MB) besides the backbone; fitting streams the training
images batch by batch (:mod:`anomjax.nn.gaussian`), so it does not grow with their number.
On WRN50 at ``d = 550`` and 224 px, the scatter, the batch scatter, the cross term and the
Cholesky factor each take ``56 * 56 * 550^2 * 4`` bytes = 3.8 GB while fitting.
"""

from __future__ import annotations

import abc
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
from anomjax.methods.hyper import hyper
from anomjax.methods.protocol import FittedMethod
from anomjax.nn import gaussian
from anomjax.nn.pyramid import concat_taps
from anomjax.scoring import to_scores
from anomjax.types import Batch, Scores

PAPER_FEATURE_DIMS = {"resnet18": 100, "wide_resnet50_2": 550}
"""``d`` used in the PaDiM paper for its two backbones."""

PAPER_EMBEDDING_DIMS = {"resnet18": 100, "wide_resnet50_2": 300}
"""``k`` used in the semi-orthogonal embedding paper for its two backbones."""


SO_WRN50_RATIO = 300 / 1792
"""Fraction ``k / F`` of the semi-orthogonal paper's WRN50 setting; applied to other backbones."""


def default_taps(backbone: str) -> tuple[str, str, str]:
    """Last stages at strides 4/8/16 (ResNet ``layer1-3``, Lite ``stage2``/``3``/``5``)."""
    if backbone.startswith(("resnet", "wide_resnet")):
        return ("layer1", "layer2", "layer3")
    if backbone.startswith("efficientnet_lite"):
        return ("stage2", "stage3", "stage5")
    raise ValueError(f"no default PaDiM taps for backbone {backbone!r}; set taps=...")


def default_feature_dim(backbone: str, total_channels: int) -> int:
    """The paper's ``d`` for ResNet18/WRN50, all ``total_channels`` on Lite (chosen by
    measurement: ``experiments/method_notes.md#padim``), else the ResNet18 proportion
    ``100 / 448`` of ``total_channels``."""
    if backbone in PAPER_FEATURE_DIMS:
        return PAPER_FEATURE_DIMS[backbone]
    if backbone.startswith("efficientnet_lite"):
        return total_channels
    return max(1, min(total_channels, round(total_channels * 100 / 448)))


def default_embedding_dim(backbone: str, total_channels: int) -> int:
    """The paper's ``k`` for ResNet18/WRN50, else the WRN50 proportion of ``total_channels``."""
    if backbone in PAPER_EMBEDDING_DIMS:
        return PAPER_EMBEDDING_DIMS[backbone]
    return max(1, round(total_channels * SO_WRN50_RATIO))


def random_channel_index(key: jax.Array, total: int, d: int) -> jax.Array:
    """``d`` distinct channel indices ``[d]`` int32 in ``[0, total)``, sorted."""
    if not 0 < d <= total:
        raise ValueError(f"cannot pick {d} channels out of {total}")
    return jnp.sort(jax.random.choice(key, total, (d,), replace=False)).astype(jnp.int32)


def semi_orthogonal_matrix(key: jax.Array, rows: int, cols: int) -> jax.Array:
    """Random ``[rows, cols]`` matrix with orthonormal columns (``W^T W = I``), ``cols <= rows``.

    The ``Q`` factor of a standard-normal matrix, with column signs fixed by ``R``'s diagonal
    so that ``W`` is Haar-distributed rather than biased by the QR sign convention.
    """
    if not 0 < cols <= rows:
        raise ValueError(f"a semi-orthogonal [{rows}, {cols}] embedding needs 0 < k <= {rows}")
    q, r = jnp.linalg.qr(jax.random.normal(key, (rows, cols), jnp.float32))
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)


def project(features: jax.Array, projection: jax.Array) -> jax.Array:
    """``[B, h, w, F]`` -> ``[B, h, w, d]``: a channel index ``[d]`` (int) gathers channels, a
    semi-orthogonal matrix ``[F, d]`` (float) embeds them (at ``Precision.HIGHEST``)."""
    if jnp.issubdtype(projection.dtype, jnp.integer):
        return jnp.take(features, projection, axis=-1)
    return jnp.einsum("bhwf,fk->bhwk", features, projection,
                      precision=jax.lax.Precision.HIGHEST)


def fit_gaussians(embed, batches: Iterable[Batch], epsilon: float,
                  merge_images: int = 48) -> gaussian.Gaussian:
    """Stream ``batches`` through ``embed`` (images -> ``[B, h, w, d]``) into Gaussians.

    The features of consecutive batches are merged into the statistics ``merge_images`` at a
    time: each update reads and writes the whole ``[h, w, d, d]`` scatter, and its per-position
    products contract over the images, so a few larger updates are faster than many small
    ones (measured: ``experiments/method_notes.md#padim``). A last batch smaller than the
    first is padded for ``embed`` (:func:`embed_padded`).
    """
    stats, pending = None, []

    def merge(stats: gaussian.GaussianStats | None) -> gaussian.GaussianStats:
        features = pending[0] if len(pending) == 1 else jnp.concatenate(pending)
        pending.clear()
        return gaussian.update_stats(stats, features)

    batch_size = None
    for images in same_size_images(batches):
        batch_size = batch_size or len(images)
        pending.append(embed_padded(embed, images, batch_size))
        if sum(len(f) for f in pending) >= merge_images:
            stats = merge(stats)
    if pending:
        stats = merge(stats)
    if stats is None:
        raise ValueError("no training images: the batches were empty")
    return gaussian.finalize(stats, epsilon)


def embed_padded(embed, images: np.ndarray, batch_size: int) -> jax.Array:
    """``embed(images)`` with a batch smaller than ``batch_size`` padded to it (copies of its
    first image, dropped from the result), so the jitted embedding compiles once."""
    missing = batch_size - len(images)
    if missing <= 0:
        return embed(images)
    padded = np.concatenate([images, np.repeat(images[:1], missing, axis=0)])
    return embed(padded)[: len(images)]


def gaussian_scores(fitted: gaussian.Gaussian, features: jax.Array, size: tuple[int, int],
                    sigma: float, sigma_side: int) -> Scores:
    """Mahalanobis maps of ``features`` ``[B, h, w, d]`` upsampled to ``size`` and smoothed
    (``sigma`` set at ``sigma_side``, :func:`anomjax.scoring.scaled_sigma`)."""
    if features.shape[1:3] != fitted["mean"].shape[:2]:
        raise ValueError(f"test images give a {features.shape[1:3]} feature grid but the model "
                         f"was fitted on {fitted['mean'].shape[:2]}: use the fit image size")
    return to_scores(gaussian.mahalanobis(fitted, features), size, sigma,
                     sigma_side=sigma_side)


@dataclasses.dataclass(frozen=True)
class _PatchGaussians(FittedMethod):
    """What PaDiM and semi-orthogonal PaDiM share; subclasses choose the projection.

    Attributes:
      backbone: backbone name (:func:`anomjax.backbones.backbone_names`).
      backbone_weights: path of user weights, or ``None`` for the bundled/pretrained ones.
      taps: stages to concatenate, fine to coarse; ``()`` = :func:`default_taps`.
      epsilon: ridge added to every covariance (0.01 in the paper).
      sigma: Gaussian smoothing of the upsampled map, in pixels (4 in the paper).
      sigma_side: image side at which the smoothing sigma holds (the 224 px crops of the paper);
        other sizes scale it with their shorter side (0: pixels at every size).
    """

    projection_key: ClassVar[str]

    backbone: str = hyper("efficientnet_lite0", choices=BACKBONES)
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ()
    epsilon: float = hyper(0.01, low=0.0, high=1e6)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(224, low=0)

    def __post_init__(self) -> None:
        if self.taps:
            check_taps(self.name, self.backbone, self.taps)

    @property
    def feature_taps(self) -> tuple[str, ...]:
        """The taps actually used."""
        return tuple(self.taps) or default_taps(self.backbone)

    @abc.abstractmethod
    def draw_projection(self, key: jax.Array, total: int) -> jax.Array:
        """The random projection of ``total`` concatenated channels (see :func:`project`)."""

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        """Fit the per-position Gaussians; state holds ``backbone``, the projection (under
        ``projection_key``), ``mean`` ``[h, w, d]`` and ``inv_chol`` ``[h, w, d, d]`` (the
        inverse Cholesky factor of each covariance, :mod:`anomjax.nn.gaussian`)."""
        key_backbone, key_projection = jax.random.split(key)
        variables = load_variables(self.backbone, self.backbone_weights, key_backbone)
        extractor = get_backbone(self.backbone)
        total = sum(extractor.taps[t].channels for t in self.feature_taps)
        projection = self.draw_projection(key_projection, total)
        fitted = fit_gaussians(lambda images: _embed(self, variables, projection, images),
                               batches, self.epsilon)
        return {"backbone": variables, self.projection_key: projection, **fitted}

    def embed(self, variables: State, projection: jax.Array, images: jax.Array) -> jax.Array:
        """Patch embeddings ``[B, h, w, d]`` of images ``[B, H, W, 3]``."""
        extractor = get_backbone(self.backbone)
        features = extractor.features(variables, images, taps=self.feature_taps)
        return project(concat_taps(features, self.feature_taps), projection)

    def score(self, state: State, images: jax.Array) -> Scores:
        """Anomaly maps ``[B, H, W]`` and image scores ``[B]`` (max of the map)."""
        features = self.embed(state["backbone"], state[self.projection_key], images)
        fitted = {k: state[k] for k in ("mean", "inv_chol", "chol") if k in state}
        return gaussian_scores(fitted, features, images.shape[1:3], self.sigma,
                               self.sigma_side)


@register
@dataclasses.dataclass(frozen=True)
class PaDiM(_PatchGaussians):
    """PaDiM: ``n_features`` random channels (``0`` = :func:`default_feature_dim`); other
    attributes as in :class:`_PatchGaussians`."""

    name: ClassVar[str] = "padim"
    projection_key: ClassVar[str] = "channel_index"

    n_features: int = hyper(0, low=0, high=65536)

    def draw_projection(self, key: jax.Array, total: int) -> jax.Array:
        d = self.n_features or default_feature_dim(self.backbone, total)
        return random_channel_index(key, total, d)


@register
@dataclasses.dataclass(frozen=True)
class SemiOrthogonalPaDiM(_PatchGaussians):
    """Semi-orthogonal PaDiM: a ``k``-column semi-orthogonal embedding (``0`` =
    :func:`default_embedding_dim`); other attributes as in :class:`_PatchGaussians`."""

    name: ClassVar[str] = "so_padim"
    projection_key: ClassVar[str] = "embedding"

    k: int = hyper(0, low=0, high=65536)

    def draw_projection(self, key: jax.Array, total: int) -> jax.Array:
        return semi_orthogonal_matrix(key, total, self.k or default_embedding_dim(self.backbone,
                                                                                  total))


def _embed_impl(method: _PatchGaussians, variables: State, projection: jax.Array,
                images: jax.Array) -> jax.Array:
    return method.embed(variables, projection, images)


_embed = jax.jit(_embed_impl, static_argnums=0)
