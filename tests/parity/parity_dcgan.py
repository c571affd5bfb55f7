"""Key mapping between our DCGAN modules (``anomjax.nn.conv_ae``) and the DCGAN ``Encoder`` /
``Decoder`` of samet-akcay/ganomaly's ``lib/networks.py`` (``nn.Sequential`` named
``main.initial-conv-3-8``, ``main.pyramid-8-16-conv``, ...), which the GANomaly, AnoGAN and
f-AnoGAN parity references all use.

PyTorch's ``ConvTranspose2d`` weight ``[in, out, kh, kw]`` is the gradient of a convolution:
the same map as ``lax.conv_transpose`` (ours, not kernel-transposed) with the spatially
flipped kernel ``[kh, kw, in, out]``. :func:`deconv_as_conv` rewrites those tensors into the
convolution layout ``[out, in, kh, kw]`` that the harness's checked mapping transposes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from anomjax.backbones.convert import torch_to_flax
from anomjax.nn.conv_ae import dcgan_depth

ModuleKey = Callable[[tuple[str, ...]], str]


def encoder_keys(ours: tuple[str, ...], theirs: str, size: int, width: int,
                 channels: int = 3) -> dict[tuple[str, ...], str]:
    """Our ``DCGANEncoder`` at module path ``ours`` -> their ``Encoder`` under ``theirs``
    (their last convolution is named ``final-<c>-1-conv`` whatever its width)."""
    depth = dcgan_depth(size)
    keys = {(*ours, "conv0"): f"{theirs}.initial-conv-{channels}-{width}",
            (*ours, "final"): f"{theirs}.final-{width * 2 ** (depth - 1)}-1-conv"}
    for i in range(1, depth):
        keys[(*ours, f"conv{i}")] = f"{theirs}.pyramid-{width * 2 ** (i - 1)}-{width * 2 ** i}-conv"
        keys[(*ours, f"norm{i}")] = f"{theirs}.pyramid-{width * 2 ** i}-batchnorm"
    return keys


def discriminator_keys(ours: tuple[str, ...], theirs: str,
                       size: int) -> dict[tuple[str, ...], str]:
    """Our ``DCGANCritic`` (module ``body``) -> their ``NetD`` (``features`` = the encoder's
    layers but the last, ``classifier.0`` = its last convolution)."""
    keys = {(*ours, "body", "conv0"): f"{theirs}.features.0",
            (*ours, "body", "final"): f"{theirs}.classifier.0"}
    for i in range(1, dcgan_depth(size)):  # [conv, LeakyReLU] then [conv, BN, LeakyReLU] * n
        keys[(*ours, "body", f"conv{i}")] = f"{theirs}.features.{3 * i - 1}"
        keys[(*ours, "body", f"norm{i}")] = f"{theirs}.features.{3 * i}"
    return keys


def decoder_keys(ours: tuple[str, ...], theirs: str, size: int, width: int, latent: int,
                 channels: int = 3) -> dict[tuple[str, ...], str]:
    """Our ``DCGANDecoder`` at module path ``ours`` -> their ``Decoder`` under ``theirs``."""
    depth = dcgan_depth(size)
    top = width * 2 ** (depth - 1)
    keys = {(*ours, "initial"): f"{theirs}.initial-{latent}-{top}-convt",
            (*ours, "norm0"): f"{theirs}.initial-{top}-batchnorm",
            (*ours, f"deconv{depth - 1}"): f"{theirs}.final-{width}-{channels}-convt"}
    for i in range(depth - 1):
        c_in, c_out = top // 2 ** i, top // 2 ** (i + 1)
        keys[(*ours, f"deconv{i}")] = f"{theirs}.pyramid-{c_in}-{c_out}-convt"
        keys[(*ours, f"norm{i + 1}")] = f"{theirs}.pyramid-{c_out}-batchnorm"
    return keys


def deconv_as_conv(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``ConvTranspose2d`` weights (names ending ``-convt.weight``) in our convolution layout."""
    return {k: (np.flip(v, (2, 3)).transpose(1, 0, 2, 3) if k.endswith("convt.weight") else v)
            for k, v in tensors.items()}


def lookup(keys: Mapping[tuple[str, ...], str]) -> ModuleKey:
    """A ``module_key`` for :func:`torch_to_flax` from an explicit table."""
    def key(path: tuple[str, ...]) -> str:
        if path not in keys:
            raise KeyError(f"no reference module for our {'/'.join(path)}")
        return keys[path]
    return key


def from_reference(fixture: Any, group: str, template: Mapping[str, Any],
                   keys: Mapping[tuple[str, ...], str]) -> dict[str, Any]:
    """``template`` filled from ``fixture``'s ``group`` (transposed convolutions converted),
    every reference tensor used once, every shape checked."""
    return torch_to_flax(template, deconv_as_conv(fixture.group(group)), lookup(keys),
                         f"{fixture.path.name}:{group}")


def update(after: Any, before: Any) -> Any:
    """``after - before`` leaf by leaf: one optimiser step's update, which a comparison of the
    stepped parameters alone would hide below the tolerance (an update of ``lr`` ~ 1e-4 is
    far smaller than 1e-3 of the weights)."""
    return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                        after, before)
