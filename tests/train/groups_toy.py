"""A toy method with three parameter groups, two phases and an every-other-step update, whose
first steps can be computed by hand (plain SGD)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from anomjax.methods.optimization import GroupedOptimizer, Phase, Update
from anomjax.methods.protocol import TrainedMethod
from anomjax.scoring import to_scores
from anomjax.types import Scores


@dataclasses.dataclass(frozen=True)
class ToyGroups(TrainedMethod):
    """``a`` chases ``b`` and the image mean, ``b`` chases ``2 a`` (after ``a``'s update), then
    from step ``switch`` on ``c`` chases ``a``; ``b`` updates only on odd steps with
    ``every=2``."""

    name: ClassVar[str] = "toy_groups"
    lr: float = 0.1
    switch: int = 2
    b_every: int = 1

    def init(self, key, images):
        del images
        ka, kb = jax.random.split(key)
        return {"params": {"a": jax.random.normal(ka, (2,)), "b": jax.random.normal(kb, (2,)),
                           "c": jnp.zeros((2,))},
                "batch_stats": {"count": jnp.zeros(())}}

    def loss_a(self, params, state, images, key):
        m = jnp.mean(images)
        loss = jnp.sum((params["a"] - params["b"]) ** 2) + m * jnp.sum(params["a"])
        return loss, {"batch_stats": {"count": state["batch_stats"]["count"] + 1},
                      "image_mean": m, "carry": {"a_before": params["a"]}}

    def loss_b(self, params, state, images, key):
        return (jnp.sum((params["b"] - 2 * params["a"]) ** 2),
                {"a_before_sum": jnp.sum(state["carry"]["a_before"])})

    def loss_c(self, params, state, images, key):
        return jnp.sum((params["c"] - params["a"]) ** 2), {"seen": state["batch_stats"]["count"]}

    def optimizer(self, total_steps):
        sgd = optax.sgd(self.lr)
        return GroupedOptimizer(
            optimizers={"a": sgd, "b": sgd, "c": sgd},
            phases=(Phase((Update("a", "a", self.loss_a),
                           Update("b", "b", self.loss_b, every=self.b_every)), until=self.switch),
                    Phase((Update("c", "c", self.loss_c),))))

    def score(self, state, images) -> Scores:
        err = jnp.mean(images, axis=-1) * jnp.sum(state["params"]["c"])
        return to_scores(err, images.shape[1:3], sigma=0.0)
