"""Methods that declare ``frozen_features``: given them, the loss skips the frozen network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.methods.distillation.mkd import MKD
from anomjax.methods.distillation.reverse_distillation import ReverseDistillation
from anomjax.methods.distillation.stpm import STPM
from anomjax.methods.flows.cflow import CFlow
from anomjax.methods.flows.csflow import CSFlow
from anomjax.methods.flows.fastflow import FastFlow
from anomjax.methods.reconstruction.dfr import DFR


def _products(fn, *args) -> int:
    """Matrix products and convolutions in the jaxpr of ``fn(*args)``."""
    text = str(jax.make_jaxpr(fn)(*args))
    return text.count("dot_general") + text.count("conv_general_dilated")


METHODS = [STPM(taps=("stage2", "stage3")), ReverseDistillation(), MKD(),
           CFlow(taps=("stage2", "stage3"), condition_dim=16, coupling_blocks=2),
           FastFlow(taps=("stage2", "stage3"), flow_steps=2),
           CSFlow(tap="stage3", coupling_blocks=1, hidden=16), DFR(latent_dim=8)]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_loss_with_cached_features_runs_no_frozen_network_and_is_unchanged(method):
    # 64 px: at 32 px RD's bottleneck is 1 x 1, and its batch-statistics BatchNorm over two
    # values turns rounding into visible loss differences.
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 64, 64, 3)), jnp.float32)
    state = method.init(jax.random.key(0), images)
    key = jax.random.key(1)
    frozen = jax.jit(method.frozen_features)(state, images)
    teacher_alone = _products(method.frozen_features, state, images)
    assert teacher_alone > 0

    def loss(x, cached=None):
        extra = {} if cached is None else {"frozen": cached}
        return method.loss(state["params"], state, x, key, **extra)[0]

    assert _products(loss, images) - _products(loss, images, frozen) == teacher_alone
    np.testing.assert_allclose(jax.jit(loss)(images, frozen), jax.jit(loss)(images), rtol=1e-5)
