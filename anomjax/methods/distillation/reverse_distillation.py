"""Reverse Distillation (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022).

A frozen pretrained encoder (the teacher) gives multi-scale features ``E_1..E_3``. A trainable
one-class bottleneck embedding (OCBE) fuses them — the shallower maps are brought to the
deepest one's resolution by strided 3x3 conv + BN + ReLU layers, concatenated, and a residual
stage with stride 2 compresses them into a compact embedding — and a trainable student decoder
mirrors the encoder with upsampling residual stages to reconstruct ``D_1..D_3``.

Training loss, summed over the scales ``k`` (``loss_cosine``):

* ``"flattened"`` (default, the official code ``hq-deng/RD4AD`` ``main.py::loss_fucntion``,
  also anomalib's): ``mean_b (1 - cos(vec E_k[b], vec D_k[b]))``, the cosine of each image's
  whole flattened map (positions with large features weigh more);
* ``"per_position"`` (the paper's Eq.): ``mean_{b,h,w} (1 - cos(E_k, D_k))``, the cosine over
  channels at every position.

The default follows the code. On a synthetic toy (``tests/methods``: wood, 64 px, 16 epochs)
the paper's form localised better (measured:
``experiments/method_notes.md#reverse_distillation``); on real data see
``experiments/RESULTS.md``.

At test time the map is ``sum_k upsample(1 - cos_channel(E_k, D_k))`` (per position, as the
official ``cal_anomaly_map``) smoothed by a Gaussian of sigma 4; the image score is its
maximum.

Paper/official defaults kept: Adam with lr 0.005 and betas (0.5, 0.999), 200 epochs,
batch size 16 (``default_batch_size``), 256 x 256 images (``default_image_size``), three
scales, sigma 4.

Deviations: the paper's teacher is WideResNet-50-2 (layer1..layer3) with Bottleneck blocks in
the OCBE (three in its residual stage) and a decoder of [3, 4, 6] Bottleneck blocks; that
model is **not** built here. What is built follows the paper's ResNet-18 variant: basic
blocks, ``blocks`` (2) per stage, an embedding of twice the deepest tap's channels. The
default teacher is EfficientNet-Lite0 (taps ``stage2, stage3, stage4``, strides 4/8/16,
channels 24/40/80). Lite0's stage outputs are linear (about half of the values negative),
while the official decoder ends every stage in a ReLU (right for ResNet teachers, whose taps
are post-ReLU): a non-negative ``D_k`` cannot point where a signed ``E_k`` does, which leaves a
floor of about 0.3 on ``1 - cos`` per scale. So the last block of each decoder stage ends
without its ReLU unless ``decoder_final_relu`` says otherwise (default ``"auto"``: on for
the ResNet backbones, off for the others). Any backbone of :mod:`anomjax.backbones` whose three
taps have strides ``s, 2s, 4s`` runs (``wide_resnet50_2`` with ``layer1, layer2, layer3`` and
user-supplied weights runs with basic blocks: not the paper's WRN50 model). The map's
bilinear upsampling aligns the corner pixels as the official code's
``F.interpolate(..., align_corners=True)`` (``align_corners=False``: half-pixel centres, the
library's other maps' convention). The transposed convolutions get He initialisation
(officially PyTorch's default). BatchNorm running variances are updated with the biased batch
variance (Flax; PyTorch uses the unbiased one), which matters only for tiny batch maps.

Parity: ``tests/parity/test_parity_reverse_distillation.py`` compares teacher features,
OCBE + decoder output, loss, every gradient, one Adam step, map and image score with the
official code (ResNet-18, 64 px; ``experiments/parity/distillation.md``).
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
from anomjax.nn.resnet_blocks import ResidualStage, batch_norm, conv
from anomjax.nn.teacher import (
    check_taps,
    frozen_features,
    post_relu_taps,
    teacher,
    teacher_variables,
)
from anomjax.scoring import gaussian_blur, upsample
from anomjax.types import Scores

BACKBONES = tuple(backbone_names())


class OneClassBottleneck(nn.Module):
    """OCBE: multi-scale feature fusion then a stride-2 residual stage (one-class embedding).

    ``[B, 4h, 4w, c1], [B, 2h, 2w, c2], [B, h, w, c3] -> [B, h/2, w/2, embed]``.
    """

    channels: tuple[int, int, int]
    embed: int
    blocks: int

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool) -> jax.Array:
        c1, c2, c3 = self.channels
        f1, f2, f3 = feats
        f1 = nn.relu(batch_norm(train, "mff_bn1")(conv(c2, 3, 2, name="mff_conv1")(f1)))
        f1 = nn.relu(batch_norm(train, "mff_bn2")(conv(c3, 3, 2, name="mff_conv2")(f1)))
        f2 = nn.relu(batch_norm(train, "mff_bn3")(conv(c3, 3, 2, name="mff_conv3")(f2)))
        fused = jnp.concatenate([f1, f2, f3], axis=-1)
        return ResidualStage(self.embed, self.blocks, stride=2, name="oce")(fused, train)


class StudentDecoder(nn.Module):
    """Mirror of the encoder: three upsampling residual stages, deepest scale first.

    ``[B, h/2, w/2, embed] -> [[B, 4h, 4w, c1], [B, 2h, 2w, c2], [B, h, w, c3]]`` (shallow first,
    matching the teacher's taps). ``final_relu=False``: stage outputs are linear (signed).
    """

    channels: tuple[int, int, int]
    blocks: int
    final_relu: bool = True

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> list[jax.Array]:
        outs = []
        for i, c in enumerate(reversed(self.channels)):
            z = ResidualStage(c, self.blocks, upsample=True, final_relu=self.final_relu,
                              name=f"stage{i}")(z, train)
            outs.append(z)
        return outs[::-1]


class ReverseDistillationNet(nn.Module):
    """OCBE + student decoder: teacher features in, reconstructed teacher features out."""

    channels: tuple[int, int, int]
    embed: int
    blocks: int
    final_relu: bool = True

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool) -> list[jax.Array]:
        z = OneClassBottleneck(self.channels, self.embed, self.blocks, name="bottleneck")(
            feats, train)
        return StudentDecoder(self.channels, self.blocks, self.final_relu, name="decoder")(
            z, train)


def cosine_distance_map(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``1 - cos(a, b)`` over the channel axis: ``[B, h, w, C] x2 -> [B, h, w]``."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)
    return 1.0 - dot / norms


def flattened_cosine_distance(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``1 - cos(vec a[i], vec b[i])`` of each image's whole map: ``[B, h, w, C] x2 -> [B]``."""
    return cosine_distance_map(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), eps)


LOSSES = ("flattened", "per_position")


@register
@dataclasses.dataclass(frozen=True)
class ReverseDistillation(TrainedMethod):
    """Reverse Distillation (RD4AD) with a frozen teacher encoder, OCBE and student decoder.

    Attributes:
      backbone: teacher encoder name in :mod:`anomjax.backbones`.
      backbone_weights: optional weight file for the teacher (e.g. a torchvision state dict).
      taps: three teacher taps, shallow to deep, with strides ``s, 2s, 4s``.
      blocks: basic blocks per residual stage (OCE and each decoder stage).
      decoder_final_relu: ``"on"``: end each decoder stage in a ReLU (official code; right
        for post-ReLU ResNet taps), ``"off"``: linear stage outputs, ``"auto"``: on for the
        ResNet backbones, off for the others.
      loss_cosine: ``"flattened"`` (official code) or ``"per_position"`` (paper), see above.
      learning_rate, beta1, beta2: Adam settings (paper: 0.005, 0.5, 0.999).
      sigma: Gaussian smoothing of the map, in input pixels (paper: 4).
      sigma_side: image side at which the smoothing sigma holds (the authors' 256 px); other sizes
        scale it with their shorter side (0: pixels at every size).
      align_corners: bilinear upsampling of the map with aligned corners (official code)
        or half-pixel centres (``False``).
    """

    name: ClassVar[str] = "reverse_distillation"
    default_epochs: ClassVar[int] = 200  # the paper's
    default_batch_size: ClassVar[int] = 16  # the official main.py's
    default_image_size: ClassVar[int] = 256  # the paper's

    backbone: str = hyper("efficientnet_lite0", choices=BACKBONES)
    backbone_weights: str | None = hyper(None)
    taps: tuple[str, ...] = hyper(("stage2", "stage3", "stage4"))  # checked by init
    blocks: int = hyper(2, low=1, high=16)
    decoder_final_relu: str = hyper("auto", choices=("auto", "on", "off"))
    loss_cosine: str = hyper("flattened", choices=LOSSES)
    learning_rate: float = hyper(0.005, low=0.0, high=1.0, low_open=True)
    beta1: float = hyper(0.5, low=0.0, high=1.0, high_open=True)
    beta2: float = hyper(0.999, low=0.0, high=1.0, high_open=True)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)
    align_corners: bool = hyper(True)

    @property
    def final_relu(self) -> bool:
        """Whether decoder stages end in a ReLU (``decoder_final_relu``, or by backbone)."""
        return post_relu_taps(self.decoder_final_relu, self.backbone)

    def _teacher(self) -> Any:
        check_taps(self.name, self.backbone, self.taps)
        backbone = teacher(self.backbone)
        if len(self.taps) != 3:
            raise ValueError(f"reverse_distillation needs exactly 3 taps, got {self.taps}")
        strides = [backbone.taps[t].stride for t in self.taps]
        if strides[1] != 2 * strides[0] or strides[2] != 2 * strides[1]:
            raise ValueError(f"reverse_distillation taps {self.taps} have strides {strides}; "
                             "they must double from one tap to the next (s, 2s, 4s)")
        return backbone

    def _net(self, backbone: Any) -> ReverseDistillationNet:
        channels = tuple(backbone.taps[t].channels for t in self.taps)
        return ReverseDistillationNet(channels, 2 * channels[-1], self.blocks, self.final_relu)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Teacher variables (frozen) and freshly initialised OCBE + decoder."""
        backbone = self._teacher()
        check_images(self.name, images, multiple=2 * backbone.taps[self.taps[-1]].stride,
                     why=f"twice the stride of tap {self.taps[-1]}")
        variables = teacher_variables(self.backbone, self.backbone_weights)
        feats = frozen_features(backbone, variables, jnp.asarray(images[:1]), self.taps)
        net_vars = self._net(backbone).init(key, feats, train=False)
        return {"params": net_vars["params"], "batch_stats": net_vars["batch_stats"],
                "frozen": {"teacher": variables}}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam with the paper's learning rate and betas (constant schedule)."""
        del total_steps
        return optax.adam(self.learning_rate, b1=self.beta1, b2=self.beta2)

    def frozen_features(self, state: State, images: jax.Array) -> list[jax.Array]:
        """The frozen teacher's ``E_k`` ``[B, h_k, w_k, c_k]``, shallow first (a function of
        the image alone, so the training engine computes them once per training image:
        ``anomjax.train.frozen_cache``)."""
        return frozen_features(self._teacher(), state["frozen"]["teacher"], images, self.taps)

    def _reconstruct(self, params: Any, state: State, images: jax.Array, train: bool,
                     feats: list[jax.Array] | None = None
                     ) -> tuple[list[jax.Array], list[jax.Array], Any]:
        """Teacher features ``E_k`` (``feats`` if already computed), their reconstructions
        ``D_k`` (``[B, h_k, w_k, c_k]``, shallow first) and the batch stats."""
        backbone = self._teacher()
        feats = self.frozen_features(state, images) if feats is None else feats
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        if train:
            student, updates = self._net(backbone).apply(variables, feats, train=True,
                                                          mutable=["batch_stats"])
            stats = updates["batch_stats"]
        else:
            student = self._net(backbone).apply(variables, feats, train=False)
            stats = state["batch_stats"]
        return feats, student, stats

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: list[jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``sum_k`` of the mean over the batch of ``1 - cos(E_k, D_k)``, flattened per image or
        per position (``loss_cosine``); ``frozen``: the teacher's features of ``images`` when
        the engine cached them."""
        del key
        feats, recon, stats = self._reconstruct(params, state, images, train=True,
                                                feats=frozen)
        distance = (flattened_cosine_distance if self.loss_cosine == "flattened"
                    else cosine_distance_map)
        per_scale = [jnp.mean(distance(t, s)) for t, s in zip(feats, recon, strict=True)]
        aux = {f"cos_{t}": v for t, v in zip(self.taps, per_scale, strict=True)}
        aux["batch_stats"] = stats
        return sum(per_scale), aux

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = Gaussian-smoothed sum of upsampled ``1 - cos`` maps; image score = its max."""
        feats, recon, _ = self._reconstruct(state["params"], state, images, train=False)
        size = images.shape[1:3]
        total = sum(upsample(cosine_distance_map(t, s), size, self.align_corners)
                    for t, s in zip(feats, recon, strict=True))
        smoothed = gaussian_blur(total, self.sigma, self.sigma_side)
        return Scores(image=jnp.max(smoothed, axis=(1, 2)), maps=smoothed)
