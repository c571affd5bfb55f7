"""SSPCAB against its authors' block (``experiments/parity/sspcab.py``, ``ristea/sspcab``):
the block's output, self-supervised loss and gradients for two kernel / dilation settings,
and DRAEM + SSPCAB (the block in place of the reconstructive encoder's last block, its loss
weighted 0.1): the loss terms, the gradient and one Adam step of our train step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anomjax.methods.self_supervised.draem import DRAEM
from anomjax.nn.sspcab import SSPCAB, sspcab_loss
from anomjax.train.state import init_train_state
from anomjax.train.step import make_train_step
from tests.parity.parity_harness import GRADIENT_TOL, Fixture
from tests.parity.test_parity_draem import (
    flat,
    recording_gradients,
    reference_state,
    whole_gradient_tol,
)

FX = Fixture("sspcab")
METHOD = DRAEM(rec_width=4, seg_width=4, sspcab=True)
DRAWS = tuple(jnp.asarray(FX.input(k)) for k in ("target", "augmented", "mask"))


def block_key(names: tuple[str, ...]) -> str:
    """``conv1``..``conv4`` keep their names; ``se_fc1`` -> ``se.fc1``."""
    return names[0].replace("se_", "se.")


@pytest.mark.parametrize("name,k,d", [("block_k1_d1", 1, 1), ("block_k2_d2", 2, 2)])
def test_sspcab_block_output_loss_and_gradients(name, k, d):
    x = jnp.asarray(FX.input("block_input"))
    block = SSPCAB(16, kernel_dim=k, dilation=d)
    shapes = jax.eval_shape(block.init, jax.random.key(0), x)
    variables = FX.variables(shapes, block_key, prefix=f"{name}.")
    FX.close(f"block forward (k={k}, d={d})", block.apply(variables, x), FX.output(f"{name}_out"))

    def loss(params: Any) -> jax.Array:
        return sspcab_loss(x, block.apply({"params": params}, x))

    value, grads = jax.value_and_grad(loss)(variables["params"])
    FX.close(f"block loss (k={k}, d={d})", value, FX.output(f"{name}_loss"))
    FX.close(f"block gradients (k={k}, d={d})", grads,
             FX.variables({"params": shapes["params"]}, block_key, "grads",
                          f"{name}.")["params"], GRADIENT_TOL)


class FedDraws(DRAEM):
    """DRAEM whose training batch is the fixture's (every random draw of the reference)."""

    def anomaly_batch(self, images: jax.Array, key: jax.Array, sources: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
        return DRAWS


def test_draem_sspcab_loss_gradients_and_one_adam_step():
    fed = FedDraws(rec_width=4, seg_width=4, sspcab=True)
    optimizer = optax.chain(recording_gradients(), fed.optimizer(total_steps=1000))
    start = reference_state(METHOD, fx=FX)
    new, metrics = make_train_step(fed, optimizer)(
        init_train_state(start, optimizer, jax.random.key(0)), DRAWS[0], jax.random.key(1),
        host={"sources": jnp.zeros(DRAWS[0].shape, jnp.uint8)})
    for term in ("l2", "ssim", "focal", "sspcab", "loss"):
        FX.close(f"DRAEM + SSPCAB loss {term}", metrics[term], FX.output(term))
    ref_grads = reference_state(METHOD, "grads", FX)["params"]
    FX.close("DRAEM + SSPCAB gradients (whole vector, relative to the largest)",
             np.concatenate([np.ravel(g) for g in flat(new.opt_state[0]).values()]),
             np.concatenate([np.ravel(g) for g in flat(ref_grads).values()]),
             whole_gradient_tol(FX))
    adam = fed.optimizer(total_steps=1000)
    updates, _ = adam.update(ref_grads, adam.init(start["params"]), start["params"])
    FX.close("DRAEM + SSPCAB Adam step (from the reference gradient)",
             optax.apply_updates(start["params"], updates),
             reference_state(METHOD, "stepped", FX)["params"], GRADIENT_TOL)
