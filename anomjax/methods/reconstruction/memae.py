"""MemAE: memory-augmented autoencoder (Gong, Liu, Le, Saha, Mansour, Venkatesh & van den
Hengel, "Memorizing Normality to Detect Anomaly", ICCV 2019).

The encoder's feature map is not decoded directly: at every position its feature vector is
replaced by a sparse convex combination of ``slots`` learned memory items
(``anomjax.nn.memory.Memory``: softmax addressing, hard shrinkage with threshold ``shrink``,
L1 renormalisation), so that anomalies, built from normal prototypes, are reconstructed
badly. Training minimises ``MSE(x, x_hat) + entropy_weight * mean entropy(w)``. The map is
the per-pixel squared residual (smoothed by the shared Gaussian, ``sigma``); the image score
is its maximum.

Shrinkage threshold: the paper's rule, lambda in [1/N, 3/N] for N slots, by default its lower
end ``1 / slots`` (``shrink=None``). The weights average 1/N, so at this threshold the largest
weight of every query always survives and the memory output is never all zero (a larger
threshold can zero every weight of a near-uniform addressing, e.g. at initialisation, and then
no gradient reaches the addressing). The authors' code fixes 0.0025, which goes with its 2000
video slots (5/N there): ``shrink=0.0025`` gives it (at 100 slots it is 1/4 of 1/N and hardly
shrinks anything).

Authors' code defaults kept: entropy weight 0.0002, dot-product addressing (the paper writes a
cosine similarity: ``addressing="cosine"``), memory initialised U(-1/sqrt(C), 1/sqrt(C)), Adam
lr 1e-4, MSE reconstruction loss. Deviations: the paper's image networks are small ones for
MNIST and CIFAR-10 (and 3-D convolutions for video); here the encoder and decoder are Bergmann
et al.'s (``anomjax.methods.reconstruction.autoencoder``) and the memory addresses the
``[B, S/16, S/16, 32]`` map before their bottleneck; ``slots`` defaults to 100 (the paper's
image experiments; its video setting is 2000); the Gaussian smoothing is the library's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.reconstruction.autoencoder import bergmann_layers
from anomjax.methods.reconstruction.constant_adam import ConstantAdamMethod
from anomjax.nn.conv_ae import ConvDecoder, ConvEncoder, Layer
from anomjax.nn.fast_init import init_variables
from anomjax.nn.losses import l2_loss, squared_error_map
from anomjax.nn.memory import Memory, addressing_entropy, memory_init
from anomjax.precision import scored_at_full_precision
from anomjax.scoring import to_scores
from anomjax.types import Scores


class MemoryAutoencoder(nn.Module):
    """``[B, S, S, 3] -> (x_hat [B, S, S, 3], addressing weights [B, h, w, slots])``."""

    layers: tuple[Layer, ...]
    slots: int
    shrink: float
    addressing: str

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        feats = ConvEncoder(self.layers, 1, name="encoder")(x, spatial=True)
        recalled, w = Memory(self.slots, self.shrink, self.addressing, name="memory")(feats)
        x_hat = ConvDecoder(self.layers, x.shape[1], x.shape[-1], name="decoder")(
            recalled, spatial=True)
        return x_hat, w


@register
@dataclasses.dataclass(frozen=True)
class MemAE(ConstantAdamMethod):
    """Memory-augmented autoencoder (see the module docstring).

    Attributes:
      slots: memory size N.
      shrink: hard-shrinkage threshold lambda; ``None`` (default): the paper's rule at
        ``1 / slots`` (see :attr:`threshold`); a number fixes it (authors' code: 0.0025 for
        2000 slots); 0 turns shrinkage off.
      entropy_weight: weight of the addressing-entropy loss.
      addressing: ``"dot"`` (authors' code) or ``"cosine"`` (paper).
      width: autoencoder width (see ``ae``).
      learning_rate: Adam.
      sigma: Gaussian smoothing of the map, in pixels.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "memae"

    slots: int = hyper(100, low=1, high=100_000)
    shrink: float | None = hyper(None, low=0.0, high=1.0)
    entropy_weight: float = hyper(0.0002, low=0.0)
    addressing: str = hyper("dot", choices=("dot", "cosine"))
    width: int = hyper(32, low=1, high=1024)
    learning_rate: float = hyper(1e-4, low=0.0, high=1.0, low_open=True)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    @property
    def threshold(self) -> float:
        """The hard-shrinkage threshold used: ``shrink``, or ``1 / slots`` when it is None."""
        return 1.0 / self.slots if self.shrink is None else self.shrink

    def _net(self, images: jax.Array) -> MemoryAutoencoder:
        check_images(self.name, images, multiple=16, square=True)
        return MemoryAutoencoder(bergmann_layers(self.width), self.slots, self.threshold,
                                 self.addressing)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Random autoencoder and memory."""
        variables = init_variables(self._net(images), key, jnp.asarray(images[:1]),
                                   special={"memory": memory_init})
        return {"params": variables["params"]}

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``MSE + entropy_weight * entropy`` of the addressing weights."""
        del state, key
        x_hat, w = self._net(images).apply({"params": params}, images)
        recon, entropy = l2_loss(images, x_hat), addressing_entropy(w)
        return recon + self.entropy_weight * entropy, {"mse": recon, "entropy": entropy}

    @scored_at_full_precision
    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = squared residual, smoothed; image score = its maximum."""
        x_hat, _ = self._net(images).apply({"params": state["params"]}, images)
        return to_scores(squared_error_map(images, x_hat), images.shape[1:3], self.sigma,
                         sigma_side=self.sigma_side)
