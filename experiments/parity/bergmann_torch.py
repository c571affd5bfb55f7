"""Bergmann et al.'s convolutional autoencoder in plain PyTorch, written from the paper.

Bergmann, Löwe, Fauser, Sattlegger & Steger, "Improving Unsupervised Defect Segmentation by
Applying Structural Similarity to Autoencoders", VISAPP 2019, Table 1 (no public authors'
code): eight convolutions (4x4 stride 2 or 3x3 stride 1, "same" padding: 1 pixel), each
followed by LeakyReLU(0.2), of widths 32-32-32-64-64-128-64-32; a bottleneck convolution
over the remaining ``S/16 x S/16`` map to the latent code; the decoder mirrors the encoder
with transposed convolutions and (the sigmoid is anomjax's documented choice, the paper
gives no output activation) ends in a sigmoid. Shared by the ``ae``, ``memae``, ``vae`` and
``favae`` parity scripts; it never imports JAX or anomjax.

Module names: ``encoder.conv{i}``, ``encoder.bottleneck``, ``decoder.bottleneck``,
``decoder.deconv{i}``; transposed-convolution weights are ``[C_in, C_out, k, k]`` (torch).
"""

from __future__ import annotations

import torch
from torch import nn

#: (width, kernel, stride) of the paper's encoder before the bottleneck.
PAPER_LAYERS = ((32, 4, 2), (32, 4, 2), (32, 3, 1), (64, 4, 2), (64, 3, 1), (128, 4, 2),
                (64, 3, 1), (32, 3, 1))


def scaled_layers(width: int) -> tuple[tuple[int, int, int], ...]:
    """The paper's layers with every width times ``width / 32`` (at least 1)."""
    return tuple((max(f * width // 32, 1), k, s) for f, k, s in PAPER_LAYERS)


def _padding(kernel: int, stride: int) -> int:
    """"Same" padding of the paper's two kernels: 4x4/2 and 3x3/1 both pad one pixel."""
    return (kernel - stride) // 2 if stride > 1 else kernel // 2


class Encoder(nn.Module):
    """``[B, 3, S, S] -> [B, latent]`` (``spatial``: the ``[B, c, S/16, S/16]`` map; built
    without the bottleneck when ``bottleneck`` is False)."""

    def __init__(self, layers, latent: int, image_size: int, channels: int = 3,
                 bottleneck: bool = True):
        super().__init__()
        widths = [channels] + [f for f, _, _ in layers]
        for i, (f, k, s) in enumerate(layers):
            self.add_module(f"conv{i}", nn.Conv2d(widths[i], f, k, s, _padding(k, s)))
        self.count = len(layers)
        if bottleneck:
            self.bottleneck = nn.Conv2d(widths[-1], latent, image_size // 16)

    def forward(self, x: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        for i in range(self.count):
            x = nn.functional.leaky_relu(getattr(self, f"conv{i}")(x), 0.2)
        return x if spatial else self.bottleneck(x).flatten(1)


class Decoder(nn.Module):
    """``[B, latent] -> [B, 3, S, S]`` in (0, 1) (``spatial``: from the ``[B, c, S/16, S/16]``
    map, without the bottleneck)."""

    def __init__(self, layers, latent: int, image_size: int, channels: int = 3,
                 bottleneck: bool = True):
        super().__init__()
        if bottleneck:
            self.bottleneck = nn.ConvTranspose2d(latent, layers[-1][0], image_size // 16)
        mirrored = list(reversed(layers))
        outs = [f for f, _, _ in mirrored[1:]] + [channels]
        for i, ((f, k, s), out) in enumerate(zip(mirrored, outs, strict=True)):
            self.add_module(f"deconv{i}", nn.ConvTranspose2d(f, out, k, s, _padding(k, s)))
        self.count = len(layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        if hasattr(self, "bottleneck"):
            x = nn.functional.leaky_relu(self.bottleneck(z[:, :, None, None]), 0.2)
        for i in range(self.count):
            x = getattr(self, f"deconv{i}")(x)
            x = torch.sigmoid(x) if i == self.count - 1 else nn.functional.leaky_relu(x, 0.2)
        return x


class Autoencoder(nn.Module):
    """``[B, 3, S, S] -> [B, 3, S, S]`` through a ``[B, latent]`` code."""

    def __init__(self, width: int, latent: int, image_size: int):
        super().__init__()
        layers = scaled_layers(width)
        self.encoder = Encoder(layers, latent, image_size)
        self.decoder = Decoder(layers, latent, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
