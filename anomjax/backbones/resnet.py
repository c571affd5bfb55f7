"""ResNet-18/34/50/101 and Wide ResNet-50-2/101-2 in Flax Linen, laid out like torchvision.

He et al. 2016 (ResNet) and Zagoruyko & Komodakis 2016 (WRN) as implemented by torchvision:
the stride of a bottleneck sits on its 3x3 convolution ("ResNet v1.5"), wide variants double
the bottleneck width (``width_per_group=128``), padding is symmetric as in PyTorch, batch norm
eps 1e-5, frozen. Inputs are ``[B, H, W, 3]`` in ``[0, 1]``, normalised inside with the
ImageNet mean/std. Feature taps ``layer1`` .. ``layer4`` have strides 4, 8, 16, 32.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from anomjax.nn.pointwise import PointwiseConv

BN_EPS = 1e-5
NUM_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Block type, blocks per layer and bottleneck width multiplier of one variant."""

    bottleneck: bool
    blocks: tuple[int, int, int, int]
    width_factor: int = 1

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1

    def channels(self, layer: int) -> int:
        """Output channels of ``layer`` (1..4)."""
        return 64 * 2 ** (layer - 1) * self.expansion


SPECS = {
    "resnet18": ResNetSpec(False, (2, 2, 2, 2)),
    "resnet34": ResNetSpec(False, (3, 4, 6, 3)),
    "resnet50": ResNetSpec(True, (3, 4, 6, 3)),
    "resnet101": ResNetSpec(True, (3, 4, 23, 3)),
    "wide_resnet50_2": ResNetSpec(True, (3, 4, 6, 3), width_factor=2),
    "wide_resnet101_2": ResNetSpec(True, (3, 4, 23, 3), width_factor=2),
}


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=BN_EPS, name=name)


def _conv(features: int, kernel: int, name: str, stride: int = 1) -> nn.Module:
    if kernel == 1:
        return PointwiseConv(features, stride, kernel_init=_conv_init, name=name)
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_conv_init,
                   name=name)


class ResidualBlock(nn.Module):
    """torchvision ``BasicBlock`` (two 3x3) or ``Bottleneck`` (1x1, 3x3 strided, 1x1)."""

    planes: int
    stride: int
    bottleneck: bool
    width_factor: int
    downsample: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.bottleneck:
            width = self.planes * self.width_factor
            out_channels = self.planes * 4
            h = jax.nn.relu(_bn("bn1")(_conv(width, 1, "conv1")(x)))
            h = jax.nn.relu(_bn("bn2")(_conv(width, 3, "conv2", self.stride)(h)))
            h = _bn("bn3")(_conv(out_channels, 1, "conv3")(h))
        else:
            out_channels = self.planes
            h = jax.nn.relu(_bn("bn1")(_conv(self.planes, 3, "conv1", self.stride)(x)))
            h = _bn("bn2")(_conv(self.planes, 3, "conv2")(h))
        if self.downsample:
            x = _bn("downsample_bn")(_conv(out_channels, 1, "downsample_conv", self.stride)(x))
        return jax.nn.relu(h + x)


class ResNet(nn.Module):
    """ResNet classifier whose ``__call__`` returns the requested taps.

    ``module.apply(variables, images, taps=("layer2",), logits=False)`` with
    ``images [B, H, W, 3]`` in ``[0, 1]`` returns ``{tap: [B, h, w, c]}`` (plus
    ``"logits": [B, 1000]`` when ``logits``); only the layers needed are computed.
    """

    spec: ResNetSpec

    @nn.compact
    def __call__(self, images: jax.Array, taps: tuple[str, ...] = (),
                 logits: bool = False) -> dict[str, jax.Array]:
        wanted = [int(t.removeprefix("layer")) for t in taps]
        depth = 4 if logits else max(wanted, default=0)
        x = (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        x = jax.nn.relu(_bn("bn1")(_conv(64, 7, "conv1", 2)(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        out: dict[str, jax.Array] = {}
        in_channels = 64
        for layer in range(1, depth + 1):
            planes = 64 * 2 ** (layer - 1)
            for b in range(self.spec.blocks[layer - 1]):
                stride = 2 if (b == 0 and layer > 1) else 1
                x = ResidualBlock(
                    planes=planes, stride=stride, bottleneck=self.spec.bottleneck,
                    width_factor=self.spec.width_factor,
                    downsample=b == 0 and (stride != 1 or in_channels != self.spec.channels(layer)),
                    name=f"layer{layer}_{b}")(x)
                in_channels = self.spec.channels(layer)
            if layer in wanted:
                out[f"layer{layer}"] = x
        if logits:
            out["logits"] = nn.Dense(NUM_CLASSES, name="fc")(jnp.mean(x, axis=(1, 2)))
        return out


def torch_module_key(path: tuple[str, ...]) -> str:
    """Map a Flax module path to the torchvision state-dict prefix."""
    if len(path) == 1:
        return path[0]
    layer, block = path[0].split("_")
    inner = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
    return f"{layer}.{block}.{inner.get(path[1], path[1])}"
