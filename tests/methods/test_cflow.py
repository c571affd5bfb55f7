"""CFLOW-AD: the authors' defaults, the log-likelihood against a hand computation, the fibre
mini-batch step, the rotation and normaliser options, and a trained model that localises
synthetic defects (parity with the authors' code: ``tests/parity/test_parity_cflow.py``)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from anomjax.methods import make_method, method_config, method_from_config
from anomjax.methods.flows.cflow import CFlow
from tests.methods.trained_toy import assert_localises, train_and_score

TINY = CFlow(taps=("stage2", "stage3"), condition_dim=16, coupling_blocks=4,
             learning_rate=5e-3, lr_schedule="constant")


@pytest.fixture(scope="module")
def trained():
    return train_and_score(TINY, epochs=4)


def test_authors_defaults_and_registry():
    m = CFlow()
    assert (m.condition_dim, m.coupling_blocks, m.clamp, m.learning_rate) == (128, 8, 1.9, 2e-4)
    assert m.taps == ("stage3", "stage5", "stage7")
    assert (m.fibre_batch, CFlow.default_batch_size) == (256, 32)  # authors' N and batch
    assert (m.rotation_degrees, m.normalizer, m.align_corners) == (0.0, "train", False)
    # subnet Linear(d, 2d) -> ReLU -> Linear(2d, 2 * (C // 2)), d = C - C // 2 + 128
    net = m._subnets(40)[0]
    assert net.hidden == (2 * (20 + 128),) and net.features == 40
    assert make_method("cflow", {"taps": "stage2,stage3", "condition_dim": "16",
                                 "coupling_blocks": "4", "learning_rate": "0.005",
                                 "lr_schedule": "constant"}) == TINY
    assert method_from_config(method_config(TINY)) == TINY
    with pytest.raises(ValueError, match="lr_schedule"):
        CFlow(lr_schedule="step")


def test_schedule_warms_up_from_a_tenth_then_decays_by_cosine():
    from anomjax.methods.flows.common import cosine_with_warmup

    lr = cosine_with_warmup(2e-4, 100, warmup_share=0.08)
    assert float(lr(0)) == pytest.approx(2e-5)
    eta_min = 2e-4 * 1e-3
    cos = lambda s: eta_min + (2e-4 - eta_min) * (1 + np.cos(np.pi * s / 100)) / 2  # noqa: E731
    assert float(lr(8)) == pytest.approx(cos(8), rel=1e-5)
    assert float(lr(4)) == pytest.approx(2e-5 + (cos(8) - 2e-5) / 2, rel=1e-5)
    assert float(lr(100)) == pytest.approx(eta_min, rel=1e-4)


def test_log_prob_is_the_change_of_variables_per_fibre(trained):
    state, test, _ = trained
    f = jax.random.normal(jax.random.key(0), (1, 2, 3, 24))
    fibres, context = TINY._fibres(f)
    got = np.asarray(jax.jit(TINY._log_prob, static_argnums=1)(state["params"], 0, fibres,
                                                                context))
    n = fibres.shape[0]
    decoder = TINY._decoder(state["params"]["level0"], 0, 24, context)
    z = np.asarray(jax.jit(decoder.forward)(fibres), np.float64)
    jac = np.asarray(jax.jit(jax.jacfwd(lambda v: decoder.forward(v.reshape(n, 24)).reshape(-1)))(
        fibres.reshape(-1)), np.float64)
    for i in range(n):
        block = jac[24 * i:24 * (i + 1), 24 * i:24 * (i + 1)]
        want = (norm.logpdf(z[i]).sum() + np.linalg.slogdet(block)[1]) / 24
        assert got[i] == pytest.approx(want, abs=1e-4)


def test_engine_step_makes_one_adam_update_per_fibre_mini_batch(trained):
    """The real train step runs ``train_update``: per level ``B h w // fibre_batch`` updates
    of that decoder's own Adam state, one image batch on the schedule."""
    from anomjax.train.state import init_train_state
    from anomjax.train.step import make_train_step

    state, test, _ = trained
    method = dataclasses.replace(TINY, fibre_batch=128)
    optimizer = method.optimizer(10)
    copy = jax.tree.map(jnp.array, {"params": state["params"], "frozen": state["frozen"]})
    ts = init_train_state(copy, optimizer, jax.random.key(0))  # the step donates its buffers
    images = jnp.asarray(test.images[:2])  # 64 px: 16 x 16 and 8 x 8 fibres per image
    ts, metrics = make_train_step(method, optimizer)(ts, images, jax.random.key(1))
    assert float(metrics["finite"]) == 1.0
    assert (float(metrics["updates_level0"]), float(metrics["updates_level1"])) == (4.0, 1.0)
    assert int(ts.opt_state["step"]) == 1
    assert [int(ts.opt_state["levels"][f"level{lv}"].count) for lv in (0, 1)] == [4, 1]
    with pytest.raises(ValueError, match="fewer than fibre_batch"):
        make_train_step(dataclasses.replace(TINY, fibre_batch=512), optimizer)(
            ts, images, jax.random.key(1))


def test_rotation_augmentation_turns_the_frozen_feature_cache_off(trained):
    state, test, _ = trained
    images = jnp.asarray(test.images[:2])
    assert TINY.uses_frozen_features
    rotating = dataclasses.replace(TINY, rotation_degrees=5.0)
    assert not rotating.uses_frozen_features
    loss = jax.jit(lambda m, k: m.loss(state["params"], state, images, k)[0], static_argnums=0)
    assert float(loss(TINY, jax.random.key(0))) == float(loss(TINY, jax.random.key(1)))
    assert float(loss(rotating, jax.random.key(0))) != float(loss(rotating, jax.random.key(1)))
    with pytest.raises(ValueError, match="cached frozen features"):
        rotating.loss(state["params"], state, images, jax.random.key(0),
                      frozen=TINY.frozen_features(state, images))


def test_test_set_normaliser_is_taken_by_the_evaluation(trained):
    """``normalizer="test"``: training leaves no normaliser (scoring raises), evaluation
    takes the per-level maximum over the split it scores (the authors' constant)."""
    from anomjax.data.synthetic import make_category
    from anomjax.evaluate import predict_split

    state, _, _ = trained
    method = dataclasses.replace(TINY, normalizer="test")
    state = method.calibrate(state, [])
    with pytest.raises(ValueError, match="no normaliser"):
        method.score(state, jnp.zeros((1, 64, 64, 3)))
    split = make_category("fabric", n_train=2, n_test_good=2, n_test_defect=3, image_size=64,
                          seed=3).test
    preds = predict_split(method, state, split, batch_size=4, progress=False)
    images = jnp.asarray(split.load_all(num_workers=0).images)
    maxima = [float(jnp.max(m)) for m in method._log_prob_maps(state["params"], state, images)]
    want = jax.jit(method.score)({**state, "reference": jnp.asarray(maxima)}, images)
    np.testing.assert_allclose(preds.maps, want.maps, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_trained_cflow_scores_defects_above_normal_regions(trained):
    """8 image batches at lr 5e-3, each 8 + 2 fibre mini-batch updates per level."""
    _, test, scores = trained
    assert_localises(test, scores, 64, min_pixel_auroc=0.68)
