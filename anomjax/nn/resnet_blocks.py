"""ResNet basic blocks, downsampling and upsampling, for trainable encoders and decoders.

Used by Reverse Distillation's one-class bottleneck (strided blocks) and its student decoder
(blocks that upsample by 2 with a 2x2 transposed convolution, as in the paper's ``de_resnet``
decoder). Layout is NHWC; BatchNorm follows PyTorch's defaults (momentum 0.1, eps 1e-5) and
convolutions use He (fan-out) initialisation as torchvision's ResNets do.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from anomjax.nn.pointwise import PointwiseConv
from anomjax.nn.subpixel import SubpixelConvTranspose

he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults; running averages are used when ``train`` is False."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> nn.Module:
    """Bias-free ``kernel x kernel`` convolution with symmetric padding ``kernel // 2``
    (1x1 ones as a matrix product, :class:`anomjax.nn.pointwise.PointwiseConv`)."""
    if kernel == 1:
        return PointwiseConv(features, stride, kernel_init=he_fan_out, name=name)
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=he_fan_out,
                   name=name)


def deconv2x2(features: int, name: str | None = None) -> SubpixelConvTranspose:
    """Bias-free 2x2 transposed convolution with stride 2: ``[B, h, w, C] -> [B, 2h, 2w, F]``
    (as a 1x1 convolution and depth-to-space, :mod:`anomjax.nn.subpixel`)."""
    return SubpixelConvTranspose(features, 2, 2, "VALID", use_bias=False,
                                 kernel_init=he_fan_out, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016).

    ``stride=2`` halves the resolution (first conv strided, 1x1 strided shortcut);
    ``upsample=True`` doubles it instead (first conv a 2x2 transposed conv, likewise the
    shortcut). ``final_relu=False`` leaves out the ReLU after the residual sum, so the output
    can be negative (to reconstruct a signed target). ``[B, H, W, C] -> [B, H', W', features]``.
    """

    features: int
    stride: int = 1
    upsample: bool = False
    final_relu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.upsample and self.stride != 1:
            raise ValueError("a BasicBlock either downsamples (stride 2) or upsamples, not both")
        if self.upsample:
            y = deconv2x2(self.features, name="conv1")(x)
        else:
            y = conv(self.features, 3, self.stride, name="conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        y = conv(self.features, 3, name="conv2")(y)
        y = batch_norm(train, "bn2")(y)
        if self.upsample:
            x = batch_norm(train, "shortcut_bn")(deconv2x2(self.features, name="shortcut")(x))
        elif self.stride != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, self.stride, name="shortcut")(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return nn.relu(x + y) if self.final_relu else x + y


class ResidualStage(nn.Module):
    """``blocks`` basic blocks; the first one changes resolution (``stride`` or ``upsample``).

    ``final_relu=False``: the last block's output is linear (signed).
    """

    features: int
    blocks: int
    stride: int = 1
    upsample: bool = False
    final_relu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.blocks):
            first, last = i == 0, i == self.blocks - 1
            x = BasicBlock(self.features, self.stride if first else 1, self.upsample and first,
                           self.final_relu or not last, name=f"block{i}")(x, train)
        return x
