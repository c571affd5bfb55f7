"""A tiny ``kind="train"`` method and an in-memory split for the engine tests.

Kept free of the data and backbone packages so the engine is tested on its own; the
split follows the data contract (``len``, ``batches(...)`` with shuffle/seed/shards).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax.methods.protocol import TrainedMethod
from anomjax.scoring import to_scores
from anomjax.types import Batch, Scores


@dataclasses.dataclass(frozen=True)
class ToyConvAE(TrainedMethod):
    """A 3x3 convolution trained to denoise its input; BN-like running mean of the input."""

    name: ClassVar[str] = "toy_conv_ae"
    lr: float = 0.05
    noise: float = 0.05

    def init(self, key: jax.Array, images: jax.Array) -> dict:
        k1, k2 = jax.random.split(key)
        return {"params": {"w": 0.1 * jax.random.normal(k1, (3, 3, 3, 3)),
                           "b": jnp.zeros((3,))},
                "batch_stats": {"mean": jnp.zeros((3,))},
                "frozen": {"proj": jax.random.normal(k2, (3, 3))}}

    def _apply(self, params: dict, state: dict, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(x, params["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + params["b"] + x @ state["frozen"]["proj"] * 0.01

    def loss(self, params: dict, state: dict, images: jax.Array, key: jax.Array):
        noisy = images + self.noise * jax.random.normal(key, images.shape, images.dtype)
        err = jnp.mean((self._apply(params, state, noisy) - images) ** 2)
        mean = 0.9 * state["batch_stats"]["mean"] + 0.1 * jnp.mean(images, axis=(0, 1, 2))
        return err, {"batch_stats": {"mean": mean}, "mse": err}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return optax.sgd(self.lr, momentum=0.9)

    def score(self, state: dict, images: jax.Array) -> Scores:
        err = jnp.mean((self._apply(state["params"], state, images) - images) ** 2, axis=-1)
        return to_scores(err, images.shape[1:3], sigma=1.0)


@dataclasses.dataclass(frozen=True)
class HostSkewedInit(ToyConvAE):
    """``ToyConvAE`` whose init differs on every process but 0 (as a nondeterministic init
    would): a multi-host run must still train exactly like one process."""

    def init(self, key: jax.Array, images: jax.Array) -> dict:
        state = super().init(key, images)
        skew = 0.01 * jax.process_index()
        return {**state, "params": jax.tree.map(lambda p: p + skew, state["params"])}


class ArraySplit:
    """In-memory split: ``images [N, H, W, 3]``, labels and masks, with the data contract."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None,
                 masks: np.ndarray | None = None):
        self.images = np.asarray(images, np.float32)
        n, h, w, _ = self.images.shape
        self.labels = np.zeros(n, np.int32) if labels is None else labels
        self.masks = np.zeros((n, h, w), np.uint8) if masks is None else masks

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int = 32, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 4, drop_remainder: bool = False, shard_index: int = 0,
                num_shards: int = 1) -> Iterator[Batch]:
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        order = order[shard_index::num_shards]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if drop_remainder and len(idx) < batch_size:
                return
            yield Batch(self.images[idx], self.labels[idx], self.masks[idx],
                        tuple(f"img{j}" for j in idx), tuple("good" for _ in idx))


def toy_split(n: int = 16, size: int = 8, seed: int = 0) -> ArraySplit:
    """``n`` random ``size x size`` images with a smooth structure."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, (n, 1, 1, 3))
    ramp = np.linspace(0, 0.2, size)[None, :, None, None]
    return ArraySplit(np.clip(base + ramp + 0.02 * rng.normal(size=(n, size, size, 3)), 0, 1))
