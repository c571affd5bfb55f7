"""MemAE's memory module (Gong et al., "Memorizing Normality to Detect Anomaly", ICCV 2019).

A memory of ``N`` slots ``M [N, C]``. Each query ``z [..., C]`` is replaced by a convex
combination of the slots, ``z_hat = w M``, with addressing weights ``w = softmax(z M^T)``
(the authors' code: a dot product; the paper writes a cosine similarity, ``addressing=
"cosine"``), sparsified by hard shrinkage ``w_hat = relu(w - lambda) w / (|w - lambda| + eps)``
and renormalised to sum to one (L1). :func:`addressing_entropy` is the paper's entropy loss
``sum_i -w_i log w_i`` averaged over queries.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def hard_shrink(w: jax.Array, threshold: float, eps: float = 1e-12) -> jax.Array:
    """``relu(w - t) * w / (|w - t| + eps)``: weights below ``t`` become 0, others stay ~``w``."""
    return jax.nn.relu(w - threshold) * w / (jnp.abs(w - threshold) + eps)


def addressing_entropy(w: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Mean over queries of ``-sum_i w_i log(w_i + eps)``; ``w [..., N]`` -> ``[]``."""
    return jnp.mean(-jnp.sum(w * jnp.log(w + eps), axis=-1))


def memory_init(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """U(-1/sqrt(C), 1/sqrt(C)) slots ``[N, C]``, as the authors' ``reset_parameters``."""
    bound = 1.0 / math.sqrt(shape[-1])
    return rng.uniform(-bound, bound, shape)


class Memory(nn.Module):
    """``z [..., C] -> (z_hat [..., C], w [..., N])`` (see the module docstring).

    Initialise with ``anomjax.nn.fast_init.init_variables(..., special={"memory":
    memory_init})`` (or Flax's ``init``, which uses the same distribution).
    """

    slots: int
    shrink: float = 0.0025
    addressing: str = "dot"

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        channels = z.shape[-1]
        memory = self.param("memory", lambda key, shape: jax.random.uniform(
            key, shape, jnp.float32, -1 / math.sqrt(channels), 1 / math.sqrt(channels)),
            (self.slots, channels))
        z = z.astype(jnp.float32)
        if self.addressing == "dot":
            logits = jnp.einsum("...c,nc->...n", z, memory)
        elif self.addressing == "cosine":
            zn = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
            mn = memory / jnp.maximum(jnp.linalg.norm(memory, axis=-1, keepdims=True), 1e-12)
            logits = jnp.einsum("...c,nc->...n", zn, mn)
        else:
            raise ValueError(f"addressing must be 'dot' or 'cosine', got {self.addressing!r}")
        w = jax.nn.softmax(logits, axis=-1)
        if self.shrink > 0:
            w = hard_shrink(w, self.shrink)
            w = w / jnp.maximum(jnp.sum(jnp.abs(w), axis=-1, keepdims=True), 1e-12)
        return jnp.einsum("...n,nc->...c", w, memory), w
