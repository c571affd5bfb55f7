"""FastFlow: the paper's defaults, LayerNorm, and a trained model that localises synthetic
defects (the flows, loss, optimiser step and map against anomalib:
``tests/parity/test_parity_fastflow.py``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.methods import make_method, method_config, method_from_config
from anomjax.methods.flows.fastflow import FastFlow, layer_norm
from tests.methods.trained_toy import assert_localises, train_and_score

TINY = FastFlow(taps=("stage2", "stage3"), flow_steps=4)


@pytest.fixture(scope="module")
def trained():
    return train_and_score(TINY, epochs=4)


def test_paper_defaults_and_registry():
    m = FastFlow()
    assert (m.flow_steps, m.hidden_ratio, m.conv3x3_only, m.clamp) == (8, 1.0, False, 2.0)
    assert (m.learning_rate, m.weight_decay, FastFlow.default_batch_size) == (1e-3, 1e-5, 32)
    assert [s.kernel_size for s in m._subnets(24)] == [3, 1] * 4
    assert [s.hidden for s in m._subnets(24)] == [12] * 8
    assert make_method("fastflow", {"taps": "stage2,stage3", "flow_steps": "4"}) == TINY
    assert method_from_config(method_config(TINY)) == TINY
    with pytest.raises(ValueError, match="flow_steps"):
        FastFlow(flow_steps=0)


def test_layer_norm_is_over_positions_and_channels():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)) * 3 + 1
    scale, bias = np.random.default_rng(1).normal(size=(2, 3, 4, 5))
    flat = x.reshape(2, -1)
    want = ((flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5))
    want = want.reshape(x.shape) * scale + bias
    got = layer_norm(jnp.asarray(x, jnp.float32), {"scale": jnp.asarray(scale, jnp.float32),
                                                   "bias": jnp.asarray(bias, jnp.float32)})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_plain_layer_norm_option_is_the_affine_one_at_its_initial_value(trained):
    """``norm_affine=False``: no LayerNorm parameters to train, and the same latents as the
    affine LayerNorm at scale 1, bias 0."""
    import dataclasses

    import jax

    state, test, _ = trained
    plain = dataclasses.replace(TINY, norm_affine=False)
    images = jnp.asarray(test.images[:2])
    params = {level: {"flow": p["flow"]} for level, p in state["params"].items()}
    assert plain.init(jax.random.key(0), images)["params"].keys() == params.keys()
    assert all("norm" not in p for p in plain.init(jax.random.key(0), images)["params"].values())
    reset = {level: {"flow": p["flow"], "norm": jax.tree.map(jnp.ones_like, p["norm"]) | {
        "bias": jnp.zeros_like(p["norm"]["bias"])}} for level, p in state["params"].items()}
    got = jax.jit(plain._latents)(params, state, images)
    want = jax.jit(TINY._latents)(reset, state, images)
    for (z, log_det), (z_ref, log_det_ref) in zip(got, want, strict=True):
        np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-5)


def test_scoring_another_size_is_a_clear_error(trained):
    state, _, _ = trained
    with pytest.raises(ValueError, match="training size"):
        TINY.score(state, jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="divide uint8"):
        TINY.score(state, jnp.zeros((1, 64, 64, 3), jnp.uint8))


@pytest.mark.slow
def test_trained_fastflow_scores_defects_above_normal_regions(trained):
    _, test, scores = trained
    assert_localises(test, scores, 64, min_pixel_auroc=0.8)
