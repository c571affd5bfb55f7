"""EfficientNet-Lite0..4 in Flax Linen (Tan & Le 2019; the TF "lite" variant).

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-and-excitation, and
the stem (32 channels), the head (1280 channels) and the repeats of the first and last block
groups are not scaled. Convolutions use TensorFlow "SAME" padding (extra pad on the
bottom/right for strided convs), batch norm eps 1e-3, frozen (running statistics). Inputs are
``[B, H, W, 3]`` in ``[0, 1]``; the backbone normalises them as ``(255 x - 127) / 128``, the
preprocessing the released ImageNet weights were trained with.

On the CPU backend the stem runs as a matrix product over image patches
(:class:`anomjax.nn.patch_conv.PatchConv`) and the depthwise convolutions as shifted sums
(:mod:`anomjax.nn.depthwise`), only for speed: same parameters, same numbers up to rounding.

Feature taps ``stage1`` .. ``stage7`` are the outputs of the seven MBConv block groups
(strides 2, 4, 8, 16, 16, 32, 32); ``head`` is the classifier head's activation map (1x1
conv to 1280 channels, BN, ReLU6; stride 32) whose global average is the classifier's input.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from anomjax.nn.depthwise import depthwise_conv_shifted
from anomjax.nn.patch_conv import PatchConv
from anomjax.nn.pointwise import PointwiseConv

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
HEAD_TAP = "head"
"""Tap of the head's activations (1x1 conv -> BN -> ReLU6, ``HEAD_CHANNELS``) before pooling."""
NUM_CLASSES = 1000
# (width, depth) coefficients of efficientnet_lite_builder.py.
COEFFICIENTS = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4), 4: (1.4, 1.8)}
# EfficientNet-B0 block groups: (repeats, kernel, stride, expand ratio, in, out channels).
_BASE_GROUPS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320))

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")
# A depthwise kernel [k, k, 1, C] is C groups of one filter: fan-out k * k, as in TF's and
# timm's initialisers (variance_scaling would count k * k * C and start it sqrt(C) too small).
_depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One block group: ``repeats`` MBConv blocks, the first with ``stride``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor`` (within 10 %)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def lite_stages(variant: int) -> tuple[StageSpec, ...]:
    """Block groups of EfficientNet-Lite``variant`` (0..4) after width/depth scaling."""
    if variant not in COEFFICIENTS:
        raise ValueError(f"EfficientNet-Lite variant must be 0..4, got {variant}")
    width, depth = COEFFICIENTS[variant]
    stages = []
    last = len(_BASE_GROUPS) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_BASE_GROUPS):
        fixed = i in (0, last)
        stages.append(StageSpec(
            repeats=repeats if fixed else int(math.ceil(depth * repeats)),
            kernel=kernel, stride=stride, expand=expand,
            in_channels=STEM_CHANNELS if i == 0 else round_filters(cin, width),
            out_channels=round_filters(cout, width)))
    return tuple(stages)


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.99, epsilon=BN_EPS, name=name)


def _conv(features: int, kernel: int, name: str, stride: int = 1) -> nn.Module:
    if kernel == 1:
        return PointwiseConv(features, stride, kernel_init=_conv_init, name=name)
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                   use_bias=False, kernel_init=_conv_init, name=name)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, shifted: bool) -> jax.Array:
    """Depthwise TF-"SAME" convolution of ``x [B, H, W, C]`` by ``kernel [k, k, 1, C]``.

    ``shifted`` computes it as a sum of ``k * k`` shifted, per-channel scaled views of the
    padded input, with a hand-written gradient (:mod:`anomjax.nn.depthwise`; same arithmetic,
    other order); otherwise with XLA's grouped convolution.
    """
    if shifted:
        return depthwise_conv_shifted(x, kernel, (stride, stride))
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])


class DepthwiseConv(nn.Module):
    """``k x k`` depthwise convolution, TF "SAME" padding, no bias; kernel ``[k, k, 1, C]``.

    Parameters are laid out as ``nn.Conv(feature_group_count=C)``'s. On CPU it runs as shifted
    sums (:func:`depthwise_conv`): XLA's CPU grouped convolution is several times slower
    (measured on the whole Lite0 forward: ``experiments/method_notes.md#nn``). Other backends
    use the convolution primitive.
    """

    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", _depthwise_init, (k, k, 1, x.shape[-1]), jnp.float32)
        return depthwise_conv(x, kernel, self.stride, shifted=jax.default_backend() == "cpu")


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project, identity skip."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        mid = self.in_channels * self.expand
        if self.expand != 1:
            h = jax.nn.relu6(_bn("expand_bn")(_conv(mid, 1, "expand_conv")(h)))
        h = DepthwiseConv(self.kernel, self.stride, name="depthwise_conv")(h)
        h = jax.nn.relu6(_bn("depthwise_bn")(h))
        h = _bn("project_bn")(_conv(self.out_channels, 1, "project_conv")(h))
        if self.stride == 1 and self.in_channels == self.out_channels:
            h = h + x
        return h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier whose ``__call__`` returns the requested taps.

    Call as ``module.apply(variables, images, taps=("stage2",), logits=False)`` with
    ``images [B, H, W, 3]`` in ``[0, 1]``; returns ``{tap: [B, h, w, c]}`` (plus
    ``"logits": [B, 1000]`` when ``logits``). Only the layers needed are computed.
    """

    variant: int = 0

    @nn.compact
    def __call__(self, images: jax.Array, taps: tuple[str, ...] = (),
                 logits: bool = False) -> dict[str, jax.Array]:
        stages = lite_stages(self.variant)
        head = logits or HEAD_TAP in taps
        wanted = [int(t.removeprefix("stage")) for t in taps if t != HEAD_TAP]
        depth = len(stages) if head else max(wanted, default=0)
        x = (images * 255.0 - 127.0) / 128.0
        stem = (PatchConv(STEM_CHANNELS, 3, 2, kernel_init=_conv_init, name="stem_conv")
                if jax.default_backend() == "cpu" else _conv(STEM_CHANNELS, 3, "stem_conv", 2))
        x = jax.nn.relu6(_bn("stem_bn")(stem(x)))
        out: dict[str, jax.Array] = {}
        for s, spec in enumerate(stages[:depth], start=1):
            for b in range(spec.repeats):
                x = MBConv(in_channels=spec.in_channels if b == 0 else spec.out_channels,
                           out_channels=spec.out_channels, kernel=spec.kernel,
                           stride=spec.stride if b == 0 else 1, expand=spec.expand,
                           name=f"stage{s}_block{b}")(x)
            if s in wanted:
                out[f"stage{s}"] = x
        if head:
            x = jax.nn.relu6(_bn("head_bn")(_conv(HEAD_CHANNELS, 1, "head_conv")(x)))
            if HEAD_TAP in taps:
                out[HEAD_TAP] = x
        if logits:
            x = jnp.mean(x, axis=(1, 2))
            out["logits"] = nn.Dense(NUM_CLASSES, kernel_init=_dense_init, name="fc")(x)
        return out


def torch_module_key(variant: int) -> Callable[[tuple[str, ...]], str]:
    """Map a Flax module path to the EfficientNet-PyTorch state-dict prefix."""
    stages = lite_stages(variant)
    first_block = {}
    flat = 0
    for s, spec in enumerate(stages, start=1):
        first_block[s] = flat
        flat += spec.repeats
    top = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
           "head_bn": "_bn1", "fc": "_fc"}
    inner = {"expand_conv": "_expand_conv", "expand_bn": "_bn0",
             "depthwise_conv": "_depthwise_conv", "depthwise_bn": "_bn1",
             "project_conv": "_project_conv", "project_bn": "_bn2"}

    def key(path: tuple[str, ...]) -> str:
        if len(path) == 1:
            return top[path[0]]
        stage, block = path[0].removeprefix("stage").split("_block")
        return f"_blocks.{first_block[int(stage)] + int(block)}.{inner[path[1]]}"

    return key
