"""Reverse Distillation (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022).

A frozen pretrained encoder (the teacher) gives multi-scale features ``E_1..E_3``. A trainable
one-class bottleneck embedding (OCBE) fuses them — the shallower maps are brought to the
deepest one's resolution by strided 3x3 conv + BN + ReLU layers, concatenated, and a residual
stage with stride 2 compresses them into a compact embedding — and a trainable student decoder
mirrors the encoder with upsampling residual stages to reconstruct ``D_1..D_3``. Training
minimises, per scale ``k``, the mean over positions of ``M_k = 1 - cos(E_k, D_k)`` (cosine over
channels), summed over scales. At test time the map is ``sum_k upsample(M_k)`` smoothed by a
Gaussian of sigma 4; the image score is its maximum.

Paper defaults kept: Adam with lr 0.005 and betas (0.5, 0.999), three scales, sigma 4.
Deviations: the paper's teacher is WideResNet-50-2 (layer1..layer3) with Bottleneck blocks in
the OCBE and decoder; the default here is EfficientNet-Lite0 (taps ``stage2, stage3, stage4``,
strides 4/8/16, channels 24/40/80) with basic blocks, following the paper's ResNet-18 variant
(two blocks per stage); the embedding has twice the deepest tap's channels, as in the paper's
ResNets. Any backbone of :mod:`anomjax.backbones` whose three taps have strides ``s, 2s, 4s``
works (e.g. ``wide_resnet50_2`` with ``layer1, layer2, layer3`` and user-supplied weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.nn.resnet_blocks import ResidualStage, batch_norm, conv
from anomjax.nn.teacher import check_taps, frozen_features, teacher, teacher_variables
from anomjax.scoring import gaussian_blur, upsample
from anomjax.types import Scores


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
    matching the teacher's taps).
    """

    channels: tuple[int, int, int]
    blocks: int

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> list[jax.Array]:
        outs = []
        for i, c in enumerate(reversed(self.channels)):
            z = ResidualStage(c, self.blocks, upsample=True, name=f"stage{i}")(z, train)
            outs.append(z)
        return outs[::-1]


class ReverseDistillationNet(nn.Module):
    """OCBE + student decoder: teacher features in, reconstructed teacher features out."""

    channels: tuple[int, int, int]
    embed: int
    blocks: int

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool) -> list[jax.Array]:
        z = OneClassBottleneck(self.channels, self.embed, self.blocks, name="bottleneck")(
            feats, train)
        return StudentDecoder(self.channels, self.blocks, name="decoder")(z, train)


def cosine_distance_map(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``1 - cos(a, b)`` over the channel axis: ``[B, h, w, C] x2 -> [B, h, w]``."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)
    return 1.0 - dot / norms


@register
@dataclasses.dataclass(frozen=True)
class ReverseDistillation:
    """Reverse Distillation (RD4AD) with a frozen teacher encoder, OCBE and student decoder.

    Attributes:
      backbone: teacher encoder name in :mod:`anomjax.backbones`.
      backbone_weights: optional weight file for the teacher (e.g. a torchvision state dict).
      taps: three teacher taps, shallow to deep, with strides ``s, 2s, 4s``.
      blocks: basic blocks per residual stage (OCE and each decoder stage).
      learning_rate, beta1, beta2: Adam settings (paper: 0.005, 0.5, 0.999).
      sigma: Gaussian smoothing of the map, in input pixels (paper: 4).
    """

    name: ClassVar[str] = "reverse_distillation"
    kind: ClassVar[str] = "train"
    default_epochs: ClassVar[int] = 200  # the paper's

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ("stage2", "stage3", "stage4")
    blocks: int = 2
    learning_rate: float = 0.005
    beta1: float = 0.5
    beta2: float = 0.999
    sigma: float = hyper(4.0, low=0.0, high=64.0)

    def _teacher(self) -> Any:
        backbone = teacher(self.backbone)
        check_taps(backbone, self.taps)
        if len(self.taps) != 3:
            raise ValueError(f"reverse_distillation needs exactly 3 taps, got {self.taps}")
        strides = [backbone.taps[t].stride for t in self.taps]
        if strides[1] != 2 * strides[0] or strides[2] != 2 * strides[1]:
            raise ValueError(f"reverse_distillation taps {self.taps} have strides {strides}; "
                             "they must double from one tap to the next (s, 2s, 4s)")
        return backbone

    def _net(self, backbone: Any) -> ReverseDistillationNet:
        channels = tuple(backbone.taps[t].channels for t in self.taps)
        return ReverseDistillationNet(channels, 2 * channels[-1], self.blocks)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Teacher variables (frozen) and freshly initialised OCBE + decoder."""
        backbone = self._teacher()
        multiple = 2 * backbone.taps[self.taps[-1]].stride
        h, w = images.shape[1:3]
        if h % multiple or w % multiple:
            raise ValueError(f"reverse_distillation with taps {self.taps} needs image sides that "
                             f"are multiples of {multiple}; got {h}x{w} (choose image_size "
                             "accordingly)")
        variables = teacher_variables(self.backbone, self.backbone_weights)
        feats = frozen_features(backbone, variables, jnp.asarray(images[:1]), self.taps)
        net_vars = self._net(backbone).init(key, feats, train=False)
        return {"params": net_vars["params"], "batch_stats": net_vars["batch_stats"],
                "frozen": {"teacher": variables}}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam with the paper's learning rate and betas (constant schedule)."""
        del total_steps
        return optax.adam(self.learning_rate, b1=self.beta1, b2=self.beta2)

    def _distances(self, params: Any, state: State, images: jax.Array,
                   train: bool) -> tuple[list[jax.Array], Any]:
        backbone = self._teacher()
        feats = frozen_features(backbone, state["frozen"]["teacher"], images, self.taps)
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        if train:
            student, updates = self._net(backbone).apply(variables, feats, train=True,
                                                          mutable=["batch_stats"])
            stats = updates["batch_stats"]
        else:
            student = self._net(backbone).apply(variables, feats, train=False)
            stats = state["batch_stats"]
        return [cosine_distance_map(t, s) for t, s in zip(feats, student, strict=True)], stats

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``sum_k mean_{h,w} (1 - cos(E_k, D_k))``, averaged over the batch."""
        del key
        maps, stats = self._distances(params, state, images, train=True)
        per_scale = [jnp.mean(m) for m in maps]
        aux = {f"cos_{t}": v for t, v in zip(self.taps, per_scale, strict=True)}
        aux["batch_stats"] = stats
        return sum(per_scale), aux

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = Gaussian-smoothed sum of upsampled ``1 - cos`` maps; image score = its max."""
        maps, _ = self._distances(state["params"], state, images, train=False)
        size = images.shape[1:3]
        total = sum(upsample(m, size) for m in maps)
        smoothed = gaussian_blur(total, self.sigma)
        return Scores(image=jnp.max(smoothed, axis=(1, 2)), maps=smoothed)
