"""DFR: deep feature reconstruction (Shi, Yang & Qi, "Unsupervised anomaly segmentation via
deep feature reconstruction", Neurocomputing 2021).

Regional multi-layer features: every chosen layer of a frozen pretrained CNN is resized to the
input resolution (bilinear with ``align_corners=True`` by default, as the authors' code),
replicate-padded and average-pooled with a
``pool_size x pool_size`` window at stride ``pool_stride`` (regional aggregation), and the
layers are concatenated into ``[B, H/s, W/s, C]``. A 1x1-convolutional autoencoder
``C -> (C + 2d)/2 -> 2d -> d -> 2d -> (C + 2d)/2 -> C`` (BatchNorm + ReLU after every hidden
layer) is trained with the mean squared reconstruction error; the latent size ``d`` is the
number of principal components keeping 90 % of the variance of the training features. The
anomaly map is the per-position mean squared error over channels (the autoencoder in eval
mode), upsampled bilinearly to the input size (``align_corners=True`` by default, as the
authors'); the image score is its maximum. BatchNorm trains as PyTorch's: batch statistics,
running statistics with momentum 0.1 and the unbiased variance.

Paper/authors' defaults kept: Adam lr 1e-4, 150 epochs (authors' script,
``default_epochs``), batch size 4 (``default_batch_size``), 256 x 256 images
(``default_image_size``), bilinear resizing, 4x4 regional window with stride 4, PCA at 90 %
variance on the features of the first 10 training images in dataset order (``pca_images``;
the authors' code takes the first batch of 10 of an unshuffled loader), no smoothing of the
map (``sigma = 0``). The engine hands ``init`` the training images (``init_on_all_images``)
as an array or a re-iterable of batches; only the first ``pca_images`` are read. Deviations:
the paper uses the twelve VGG19 layers relu1_1 to relu4_4; the default here is
EfficientNet-Lite0 ``stage1..stage4`` (strides 2-16). ``align_corners=False`` resizes the
feature maps and the score map with half-pixel centres instead (this library's default before
the parity check of ``tests/parity/test_parity_dfr.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax.backbones import backbone_names
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.nn.pointwise import PointwiseConv
from anomjax.nn.teacher import check_taps, frozen_features, teacher, teacher_variables
from anomjax.scoring import to_scores
from anomjax.types import Scores

BACKBONES = tuple(backbone_names())


def resize_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``[B, h, w, C]`` to ``[B, *size, C]`` with the corner pixels' centres
    aligned (PyTorch's ``interpolate(mode="bilinear", align_corners=True)``): output pixel
    ``i`` samples input position ``i * (h - 1) / (H - 1)``."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        low = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        frac = src - low
        w = np.zeros((n_out, n_in), np.float32)
        np.add.at(w, (np.arange(n_out), low), 1.0 - frac)
        np.add.at(w, (np.arange(n_out), high), frac)
        return w

    x = jnp.einsum("Hh,bhwc->bHwc", weights(x.shape[1], size[0]), x.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("Ww,bhwc->bhWc", weights(x.shape[2], size[1]), x,
                      precision=jax.lax.Precision.HIGHEST)


def resize(x: jax.Array, size: tuple[int, int], method: str = "bilinear",
           align_corners: bool = False) -> jax.Array:
    """``[B, h, w, C] -> [B, *size, C]``: ``"nearest"``, or ``"bilinear"`` with half-pixel
    centres or (``align_corners``) :func:`resize_align_corners`."""
    if method == "bilinear" and align_corners:
        return resize_align_corners(x, size)
    return jax.image.resize(x.astype(jnp.float32), (x.shape[0], *size, x.shape[-1]),
                            method=method, antialias=False)


def regional_features(feats: list[jax.Array], size: tuple[int, int], pool_size: int,
                      pool_stride: int, method: str = "bilinear",
                      align_corners: bool = False) -> jax.Array:
    """Multi-layer regional features ``[B, H', W', sum C_l]`` from maps ``[B, h_l, w_l, C_l]``.

    Each map is resized (:func:`resize`: ``method`` ``"bilinear"`` or ``"nearest"``,
    ``align_corners``) to ``size``, replicate-padded by ``(pool_size - pool_stride) // 2`` and
    average-pooled (window ``pool_size``, stride ``pool_stride``).
    """
    pad = (pool_size - pool_stride) // 2
    out = []
    for f in feats:
        f = resize(f, size, method, align_corners)
        if pad:
            f = jnp.pad(f, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        f = nn.avg_pool(f, (pool_size, pool_size), strides=(pool_stride, pool_stride))
        out.append(f)
    return jnp.concatenate(out, axis=-1)


def first_images(images: Any, n: int) -> np.ndarray:
    """The first ``n`` images ``[n', H, W, 3]`` (``n' <= n``) of one ``[N, H, W, 3]`` array or
    of a re-iterable of such batches (read no further than needed)."""
    if hasattr(images, "shape"):
        return np.asarray(images[:n], np.float32)
    taken, count = [], 0
    for batch in images:
        taken.append(np.asarray(batch[:n - count], np.float32))
        count += len(taken[-1])
        if count >= n:
            break
    if not taken:
        raise ValueError("dfr.init got no images")
    return np.concatenate(taken)


def pca_dimension(features: jax.Array, variance_kept: float) -> int:
    """Smallest number of principal components of ``features [N, C]`` whose variance share
    reaches ``variance_kept``."""
    centred = features - jnp.mean(features, axis=0)
    cov = centred.T @ centred / max(features.shape[0] - 1, 1)
    eig = jnp.clip(jnp.linalg.eigvalsh(cov)[::-1], 0.0, None)
    share = jnp.cumsum(eig) / jnp.maximum(jnp.sum(eig), 1e-12)
    return int(jnp.searchsorted(share, variance_kept) + 1)


def reconstruction_errors(feats: jax.Array, recon: jax.Array) -> jax.Array:
    """Per-position mean squared error over channels: ``[B, h, w, C] x2 -> [B, h, w]``."""
    return jnp.mean((recon - feats) ** 2, axis=-1)


class FeatureAutoencoder(nn.Module):
    """1x1-conv autoencoder ``[B, h, w, C] -> [B, h, w, C]`` with code size ``latent``."""

    channels: int
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        mid = (self.channels + 2 * self.latent) // 2
        widths = (mid, 2 * self.latent, self.latent, 2 * self.latent, mid, self.channels)
        for i, width in enumerate(widths):
            x = PointwiseConv(width, use_bias=True, name=f"conv{i}")(x)
            if i not in (2, len(widths) - 1):  # latent code and output are linear
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 name=f"bn{i}")(x)
                x = nn.relu(x)
        return x


@register
@dataclasses.dataclass(frozen=True)
class DFR(TrainedMethod):
    """Deep feature reconstruction with a 1x1-conv autoencoder on regional features.

    Attributes:
      backbone, backbone_weights: frozen feature extractor; its weight file (``None``: the
        bundled or pretrained weights).
      taps: backbone layers whose regional features are concatenated.
      upsample: ``"bilinear"`` (authors' default) or ``"nearest"`` resizing of each layer.
      align_corners: bilinear resizing (of the layers and of the score map) with the corner
        pixels aligned, as the authors' code (``False``: half-pixel centres).
      pool_size, pool_stride: regional aggregation window and stride (input pixels).
      latent_dim: autoencoder code size; ``0`` chooses it by PCA (``variance_kept``) at init.
      variance_kept: variance share kept by the PCA choice of ``latent_dim`` (paper: 0.9).
      pca_images: how many training images (the first, in dataset order) the PCA sees
        (authors: 10).
      learning_rate: Adam learning rate (paper: 1e-4).
      sigma: Gaussian smoothing of the map in input pixels (paper: none, 0).
      sigma_side: image side at which the smoothing sigma holds (the authors' 256 px); other sizes
        scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "dfr"
    default_epochs: ClassVar[int] = 150  # the authors' script
    default_batch_size: ClassVar[int] = 4  # the authors' main.py
    default_image_size: ClassVar[int] = 256  # the authors' main.py
    init_on_all_images: ClassVar[bool] = True  # init reads the first `pca_images` of them

    backbone: str = hyper("efficientnet_lite0", choices=BACKBONES)
    backbone_weights: str | None = hyper(None)
    taps: tuple[str, ...] = hyper(("stage1", "stage2", "stage3", "stage4"))  # checked by init
    upsample: str = hyper("bilinear", choices=("bilinear", "nearest"))
    align_corners: bool = hyper(True)
    pool_size: int = hyper(4, low=1, high=64)
    pool_stride: int = hyper(4, low=1, high=64)
    latent_dim: int = hyper(0, low=0, high=100000)
    variance_kept: float = hyper(0.9, low=0.0, high=1.0, low_open=True, high_open=True)
    pca_images: int = hyper(10, low=1, high=100000)
    learning_rate: float = hyper(1e-4, low=0.0, high=1.0, low_open=True)
    sigma: float = hyper(0.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def frozen_features(self, state: State, images: jax.Array) -> jax.Array:
        """Regional features ``[B, H / pool_stride, W / pool_stride, C]`` of the frozen
        backbone (a function of the image alone, so the training engine computes them once
        per training image: ``anomjax.train.frozen_cache``)."""
        backbone = teacher(self.backbone)
        feats = frozen_features(backbone, state["frozen"]["teacher"], images, self.taps)
        return jax.lax.stop_gradient(
            regional_features(feats, images.shape[1:3], self.pool_size, self.pool_stride,
                              self.upsample, self.align_corners))

    def init(self, key: jax.Array, images: Any) -> State:
        """Teacher variables and the autoencoder (latent size from PCA when ``latent_dim=0``).

        ``images``: ``[N, H, W, 3]``, or a re-iterable of such batches; the PCA uses the first
        ``pca_images`` of them.
        """
        if self.pool_stride < 1 or self.pool_size < self.pool_stride:
            raise ValueError(f"dfr needs pool_size >= pool_stride >= 1, got pool_size="
                             f"{self.pool_size}, pool_stride={self.pool_stride}")
        check_taps(self.name, self.backbone, self.taps)
        frozen = {"teacher": teacher_variables(self.backbone, self.backbone_weights)}
        sample = first_images(images, 1 if self.latent_dim else self.pca_images)
        feats = jax.jit(self.frozen_features)({"frozen": frozen}, jnp.asarray(sample))
        channels = feats.shape[-1]
        latent = self.latent_dim or pca_dimension(feats.reshape(-1, channels),
                                                  self.variance_kept)
        variables = FeatureAutoencoder(channels, latent).init(key, feats[:1], train=False)
        return {"params": variables["params"], "batch_stats": variables["batch_stats"],
                "frozen": frozen}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam with the paper's learning rate (constant)."""
        del total_steps
        return optax.adam(self.learning_rate)

    def _reconstruct(self, params: Any, state: State, images: jax.Array, train: bool,
                     feats: jax.Array | None = None) -> tuple[jax.Array, jax.Array, Any]:
        """Regional features (``feats`` if already computed) and their reconstruction
        ``[B, h, w, C]`` each, and batch stats."""
        feats = self.frozen_features(state, images) if feats is None else feats
        latent = params["conv2"]["kernel"].shape[-1]
        net = FeatureAutoencoder(feats.shape[-1], latent)
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        if train:  # PyTorch's train-mode BatchNorm (unbiased running variance)
            recon, updates = apply_with(net, variables, feats, train=True,
                                        mutable=["batch_stats"],
                                        interceptors=[batch_norm_in_train_mode(0.9)])
            return feats, recon.astype(jnp.float32), updates["batch_stats"]
        recon = net.apply(variables, feats, train=False)
        return feats, recon.astype(jnp.float32), state["batch_stats"]

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean squared error between regional features and their reconstruction (the mean of
        the training-mode error map); ``frozen``: the regional features when the engine
        cached them."""
        del key
        feats, recon, stats = self._reconstruct(params, state, images, train=True,
                                                feats=frozen)
        return jnp.mean(reconstruction_errors(feats, recon)), {"batch_stats": stats}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = upsampled per-position reconstruction error; image score = its max."""
        feats, recon, _ = self._reconstruct(state["params"], state, images, train=False)
        errors = reconstruction_errors(feats, recon)
        size = images.shape[1:3]
        maps = resize(errors[..., None], size, "bilinear", self.align_corners)[..., 0]
        return to_scores(maps, size, self.sigma, sigma_side=self.sigma_side)
