"""PatchCore: nearest-neighbour distance to a coreset memory bank of locally aware patches.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

* Features (:mod:`anomjax.nn.patch_features`): two mid-level taps of a frozen ImageNet
  backbone; every position is described by its 3x3 neighbourhood, the deeper map is resized
  bilinearly to the shallower one's grid, every layer is adaptive-average-pooled to 1024
  values and the concatenation pooled to 1024. ``aggregation="patch"`` (default) pools the
  flattened ``C x 3 x 3`` neighbourhood, as the authors' code does (``PatchMaker`` +
  ``MeanMapper`` + ``Aggregator``); ``aggregation="mean"`` averages the 3x3 window first
  and pools the channels (anomalib's ``AvgPool2d``; this library's earlier default). The
  two nearly coincide on WideResNet-50 and differ on Lite0 and ResNet18, where the authors'
  feature keeps the nine taps apart.
* Memory bank (:mod:`anomjax.nn.coreset`): greedy k-center coreset of all training patches,
  10 % by default (``coreset_ratio``; the paper also reports 1 % and 25 %), selected on a
  random Gaussian projection to 128 dimensions, starting from a random patch (anomalib's
  start; ``coreset_start="random"``). ``coreset_start="authors"`` starts as the authors'
  ``ApproximateGreedyCoresetSampler``: every patch's running minimum begins at its mean
  distance to 10 random patches, and the first pick is the patch farthest from them on
  average. (Their projection is an ``nn.Linear``'s uniform initialisation; any random
  projection serves the Johnson-Lindenstrauss argument.)
* Scores (:mod:`anomjax.nn.knn`): a patch scores its Euclidean distance to the nearest bank
  entry. The image score is the paper's Eq. 7: with ``m*`` the test patch of largest score
  ``s*`` and ``n*`` its nearest bank entry, ``s = (1 - exp(s*) / sum_{n in N_b(n*)}
  exp(|m* - n|)) * s*`` where ``N_b(n*)`` are the ``b = 9`` nearest bank entries of ``n*``
  (``n*`` itself included); with ``b = 1`` the image score is the plain maximum patch score.
  Patch scores are upsampled bilinearly to the input size and smoothed with a Gaussian of
  sigma 4 (:func:`anomjax.scoring.to_scores`). The authors' code differs from the paper
  here: its patch score is the mean *squared* L2 distance (faiss ``IndexFlatL2``) to the
  ``anomaly_scorer_num_nn`` nearest bank entries (1 in their published runs) and its image
  score the maximum patch score (no Eq. 7). ``scoring="paper"`` (default) follows the paper,
  as anomalib does; ``scoring="authors"`` follows their code, with ``num_neighbours`` as
  their ``anomaly_scorer_num_nn`` (set it to 1 for their runs). Squaring leaves the image
  AUROC unchanged but not the smoothed maps.

Taps. The paper uses WideResNet-50-2 ``layer2`` + ``layer3`` (the last blocks at strides 8
and 16); that is the default for ResNet/WRN backbones here. On EfficientNet-Lite (our default
backbone, a deviation from the paper) the equivalent mid-level pair is ``stage3`` (the last
block group at stride 8; 40 channels on Lite0) and ``stage5`` (the last block group at
stride 16; 112 channels), the same blocks timm's feature pyramid, and hence anomalib's Lite0
PatchCore, use.

Storage. The pooled 1024-d feature is a fixed linear map of the unfolded neighbourhoods. The
bank is stored in the compact coordinates of :func:`anomjax.nn.patch_features.compact_basis`
(``K = rank <= 1024`` dimensions: 872 on Lite0 with ``"patch"``, 152 with ``"mean"``), in
which Euclidean distances equal those of the 1024-d features up to float rounding. The
coreset projection is drawn in the same coordinates; a Gaussian projection of the 1024-d
features is a Gaussian projection of the compact ones (rotation invariance), so the sampling
matches the paper's. All projections and distances run at ``Precision.HIGHEST`` (TF32 or
bfloat16 matmuls on accelerators would change the scores).

Fitting streams the training batches: per batch only the compact features (``K`` floats
per patch, host memory) and their 128-d projections (device memory) are kept; the
projections are concatenated once for the coreset loop, and the bank gathers the selected
rows from the per-batch host pieces. A short last batch is zero-padded to the batch size
(its padding rows are dropped) so that feature extraction compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from anomjax.backbones import get_backbone
from anomjax.methods.base import State, register
from anomjax.methods.feature_modeling.frozen_backbone import (
    BACKBONES,
    check_taps,
    host_images,
    load_variables,
)
from anomjax.methods.hyper import hyper
from anomjax.methods.protocol import FittedMethod
from anomjax.nn.coreset import greedy_coreset, mean_anchor_distance, random_projection
from anomjax.nn.knn import caller_mesh, nearest_neighbours
from anomjax.nn.patch_features import AGGREGATIONS, compact_patch_basis, local_patch_features
from anomjax.scoring import to_scores
from anomjax.types import Batch, Scores


def default_layers(backbone: str) -> tuple[str, str]:
    """The paper's mid-level pair: ResNet/WRN ``layer2, layer3``; Lite ``stage3, stage5``."""
    if backbone.startswith(("resnet", "wide_resnet")):
        return ("layer2", "layer3")
    if backbone.startswith("efficientnet_lite"):
        return ("stage3", "stage5")
    raise ValueError(f"no default PatchCore layers for backbone {backbone!r}; set layers=...")


SCORINGS = ("paper", "authors")
CORESET_STARTS = ("random", "authors")
AUTHORS_ANCHORS = 10
"""Random anchors of the authors' approximate greedy sampler (``number_of_starting_points``)."""


def reweighted_image_score(patch_dist: jax.Array, patch_index: jax.Array,
                           patch_features: jax.Array, bank: jax.Array,
                           num_neighbours: int, *, max_block_bytes: int,
                           mesh: Mesh | None = None) -> jax.Array:
    """The paper's image score (Eq. 7) ``[B]``.

    Args:
      patch_dist: ``[B, P]`` nearest-bank distance of every test patch.
      patch_index: ``[B, P]`` index of that nearest bank entry.
      patch_features: ``[B, P, K]`` test patch features.
      bank: ``[M, K]`` memory bank.
      num_neighbours: ``b``, bank neighbours of the nearest entry in the softmax; ``1``
        returns the plain maximum patch score ``s*``.
    """
    if num_neighbours < 1:
        raise ValueError(f"num_neighbours must be >= 1, got {num_neighbours}")
    b = patch_dist.shape[0]
    worst = jnp.argmax(patch_dist, axis=1)
    rows = jnp.arange(b)
    s_star = patch_dist[rows, worst]
    if num_neighbours == 1:  # the softmax over {n*} alone is 1: no re-weighting
        return s_star
    m_star = patch_features[rows, worst]  # [B, K]
    n_star = bank[patch_index[rows, worst]]  # [B, K]
    k = min(num_neighbours, bank.shape[0])
    _, support = nearest_neighbours(n_star, bank, k, max_block_bytes=max_block_bytes, mesh=mesh)
    return _softmax_weight(s_star, m_star, bank[support])


@jax.jit
def _softmax_weight(s_star: jax.Array, m_star: jax.Array, support: jax.Array) -> jax.Array:
    """``(1 - exp(s*) / sum_n exp(|m* - n|)) * s*`` for ``support`` ``[B, b, K]``."""
    d = jnp.sqrt(jnp.sum(jnp.square(m_star[:, None, :] - support.astype(jnp.float32)), axis=-1))
    top = jnp.maximum(jnp.max(d, axis=1), s_star)
    ratio = jnp.exp(s_star - top) / jnp.sum(jnp.exp(d - top[:, None]), axis=1)
    return (1.0 - ratio) * s_star


@register
@dataclasses.dataclass(frozen=True)
class PatchCore(FittedMethod):
    """PatchCore hyper-parameters (paper defaults; see the module docstring).

    Attributes:
      backbone: backbone name (:func:`anomjax.backbones.backbone_names`).
      backbone_weights: path of user weights, or ``None`` for the bundled/pretrained ones.
      layers: two taps, shallower first; ``()`` = :func:`default_layers` of the backbone.
      aggregation: ``"patch"`` (pool the flattened ``C x p x p`` neighbourhood, the authors'
        code) or ``"mean"`` (average the neighbourhood, then pool the channels; anomalib).
      patch_size: neighbourhood ``p`` of the local aggregation (3; odd).
      layer_dim: per-layer pooled dimension (1024).
      target_dim: final patch feature dimension (1024).
      coreset_ratio: fraction of training patches kept in the bank (0.1; 1.0 keeps all).
      projection_dim: random projection dimension of the coreset selection (128).
      coreset_start: ``"random"`` (a random first patch) or ``"authors"`` (their approximate
        sampler's mean distance to 10 random patches as initial bound).
      scoring: ``"paper"`` (Euclidean distance, Eq. 7) or ``"authors"`` (mean squared
        distance to the ``num_neighbours`` nearest entries, image score = max).
      num_neighbours: ``b`` of the image-score re-weighting (9; 1 = the plain maximum); with
        ``scoring="authors"`` the bank entries averaged per patch.
      sigma: Gaussian smoothing of the upsampled map, in pixels (4).
      sigma_side: image side at which the smoothing sigma holds (the authors' 224 px crops); other
        sizes scale it with their shorter side (0: pixels at every size).
      bank_dtype: ``"float32"`` or ``"bfloat16"`` (half the bank memory).
      knn_block_mb: bound, in MiB, on each distance block of the nearest-neighbour search.
      progress: show a progress bar during coreset selection.
    """

    name: ClassVar[str] = "patchcore"
    uses_caller_mesh: ClassVar[bool] = True

    backbone: str = hyper("efficientnet_lite0", choices=BACKBONES)
    backbone_weights: str | None = None
    layers: tuple[str, ...] = ()
    aggregation: str = hyper("patch", choices=AGGREGATIONS)
    patch_size: int = hyper(3, low=1, high=15)
    layer_dim: int = hyper(1024, low=1, high=65536)
    target_dim: int = hyper(1024, low=1, high=65536)
    coreset_ratio: float = hyper(0.1, low=0.0, high=1.0, low_open=True)
    projection_dim: int = hyper(128, low=1, high=65536)
    coreset_start: str = hyper("random", choices=CORESET_STARTS)
    scoring: str = hyper("paper", choices=SCORINGS)
    num_neighbours: int = hyper(9, low=1, high=1024)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(224, low=0)
    bank_dtype: str = hyper("float32", choices=("float32", "bfloat16"))
    knn_block_mb: int = hyper(256, low=1, high=65536)
    progress: bool = hyper(True, choices=(True, False))

    def __post_init__(self) -> None:
        if self.patch_size % 2 != 1:
            raise ValueError(f"patchcore: hyper-parameter patch_size={self.patch_size} must be "
                             "odd (a centred neighbourhood)")
        if self.layers:
            check_taps("patchcore", self.backbone, self.layers, count=2)

    @property
    def feature_layers(self) -> tuple[str, ...]:
        """The taps actually used, shallower first."""
        return tuple(self.layers) or default_layers(self.backbone)

    def basis(self) -> np.ndarray:
        """``[F, K]`` map from the unfolded neighbourhoods to compact bank coordinates."""
        taps = get_backbone(self.backbone).taps
        channels = [taps[t].channels for t in self.feature_layers]
        return compact_patch_basis(tuple(channels), self.layer_dim, self.target_dim,
                                   self.patch_size, self.aggregation)

    def draw_projection(self, key: jax.Array, dim: int) -> jax.Array:
        """The coreset's random projection ``[dim, projection_dim]`` of compact features."""
        return random_projection(key, dim, self.projection_dim)

    def draw_anchors(self, key: jax.Array, n: int) -> jax.Array:
        """``coreset_start="authors"``: the random anchor patches ``[min(10, n)]``."""
        return jax.random.choice(key, n, (min(AUTHORS_ANCHORS, n),), replace=False)

    def embed(self, variables: State, basis: jax.Array, images: jax.Array) -> jax.Array:
        """Locally aware patch features ``[B, h, w, K]`` (compact coordinates) of images."""
        layers = self.feature_layers
        features = get_backbone(self.backbone).features(variables, images, taps=layers)
        return local_patch_features([features[t] for t in layers], basis, self.patch_size)

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        """Build the bank; state: ``backbone``, ``basis`` ``[C, K]``, ``bank`` ``[M, K]``."""
        key_backbone, key_projection, key_start = jax.random.split(key, 3)
        variables = load_variables(self.backbone, self.backbone_weights, key_backbone)
        basis = jnp.asarray(self.basis())
        projection = self.draw_projection(key_projection, basis.shape[1])
        chunks, projected, batch_shape = [], [], None
        for batch in batches:
            images = host_images(batch.images, batch.paths)
            n_valid = len(images)
            batch_shape = batch_shape or images.shape
            if images.shape[1:] == batch_shape[1:] and n_valid < batch_shape[0]:
                # Pad a short (last) batch to the first one's size: no second compilation.
                pad = np.zeros((batch_shape[0] - n_valid, *images.shape[1:]), images.dtype)
                images = np.concatenate([images, pad])
            z, p = _embed_and_project(self, variables, basis, projection, images)
            rows = len(z) // len(images) * n_valid
            chunks.append(np.asarray(z[:rows]))
            projected.append(p[:rows])
        if not chunks:
            raise ValueError("no training images: the batches were empty")
        n = sum(len(c) for c in chunks)
        num_select = n if self.coreset_ratio >= 1.0 else max(1, int(n * self.coreset_ratio))
        if num_select == n:
            bank = np.concatenate(chunks)
        else:
            projected = jnp.concatenate(projected)  # the per-batch pieces are freed here
            bound = None
            if self.coreset_start == "authors":
                bound = mean_anchor_distance(projected, self.draw_anchors(key_start, n))
                start = jnp.argmax(bound)
            else:
                start = jax.random.randint(key_start, (), 0, n)
            coreset = greedy_coreset(projected, num_select, start=start, bound=bound,
                                     mesh=caller_mesh(), disable=not self.progress)
            del projected
            bank = _gather_rows(chunks, coreset.indices)
        return {"backbone": variables, "basis": basis,
                "bank": jnp.asarray(bank).astype(self.bank_dtype)}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Anomaly maps ``[B, H, W]`` and image scores ``[B]`` (``scoring``); jittable."""
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"images must be float in [0, 1], got {images.dtype}")
        bank = state["bank"]
        z = _embed(self, state["backbone"], state["basis"], images)
        b, h, w, k = z.shape
        if k != bank.shape[1]:
            raise ValueError(f"patch features have {k} dimensions but the bank has "
                             f"{bank.shape[1]}: the state was fitted with other layers/backbone")
        flat = z.reshape(b * h * w, k)
        block = self.knn_block_mb * 2**20
        mesh = caller_mesh()
        if self.scoring == "authors":
            k_bank = min(self.num_neighbours, bank.shape[0])
            dist, _ = nearest_neighbours(flat, bank, k_bank, max_block_bytes=block, mesh=mesh)
            patch = jnp.mean(jnp.square(dist), axis=1).reshape(b, h, w)
            return to_scores(patch, images.shape[1:3], self.sigma, sigma_side=self.sigma_side,
                             image_score=jnp.max(patch, axis=(1, 2)))
        dist, index = nearest_neighbours(flat, bank, 1, max_block_bytes=block, mesh=mesh)
        dist = dist.reshape(b, h * w)
        image = reweighted_image_score(dist, index.reshape(b, h * w), z.reshape(b, h * w, k),
                                       bank, self.num_neighbours, max_block_bytes=block,
                                       mesh=mesh)
        return to_scores(dist.reshape(b, h, w), images.shape[1:3], self.sigma,
                         sigma_side=self.sigma_side,
                         image_score=image)


def _gather_rows(chunks: list[np.ndarray], indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` of the row-wise concatenation of ``chunks``, without concatenating."""
    offsets = np.cumsum([0] + [len(c) for c in chunks])
    owner = np.searchsorted(offsets, indices, side="right") - 1
    out = np.empty((len(indices), chunks[0].shape[1]), chunks[0].dtype)
    for c in np.unique(owner):
        rows = owner == c
        out[rows] = chunks[c][indices[rows] - offsets[c]]
    return out


@jax.jit
def _project(z: jax.Array, projection: jax.Array) -> jax.Array:
    return jnp.matmul(z, projection, precision=jax.lax.Precision.HIGHEST)


_embed = jax.jit(PatchCore.embed, static_argnums=0)


def _embed_and_project(method: PatchCore, variables: State, basis: jax.Array,
                       projection: jax.Array, images: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Flat compact features ``[B*h*w, K]`` and their projections ``[B*h*w, d]``."""
    z = _embed(method, variables, basis, images)
    z = z.reshape(-1, z.shape[-1])
    return z, _project(z, projection)
