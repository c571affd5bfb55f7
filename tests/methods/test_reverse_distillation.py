"""Reverse Distillation: paper defaults, loss definition, errors, and localisation after a
short training run on a tiny synthetic category."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_toy import defect_contrast, pixel_auroc, train_and_score

from anomjax.methods import make_method
from anomjax.methods.distillation.reverse_distillation import (
    ReverseDistillation,
    cosine_distance_map,
)


def test_paper_defaults():
    method = make_method("reverse_distillation")
    assert isinstance(method, ReverseDistillation) and method.kind == "train"
    assert (method.learning_rate, method.beta1, method.beta2, method.sigma) == (
        0.005, 0.5, 0.999, 4.0)
    assert method.taps == ("stage2", "stage3", "stage4")


def test_cosine_distance_map_matches_numpy():
    a, b = np.random.default_rng(0).normal(size=(2, 2, 3, 4, 5)).astype(np.float32)
    expected = 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(cosine_distance_map(jnp.asarray(a), jnp.asarray(b)), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cosine_distance_map(jnp.asarray(a), jnp.asarray(3 * a)), 0,
                               atol=1e-6)


@pytest.mark.slow
def test_bad_configuration_raises_clear_errors():
    images = np.zeros((1, 64, 64, 3), np.float32)
    with pytest.raises(ValueError, match="must double"):
        ReverseDistillation(taps=("stage2", "stage4", "stage5")).init(jax.random.PRNGKey(0),
                                                                     images)
    with pytest.raises(ValueError, match="no feature tap"):
        ReverseDistillation(taps=("stage2", "stage3", "layer9")).init(jax.random.PRNGKey(0),
                                                                     images)
    with pytest.raises(ValueError, match="multiples of 32"):
        ReverseDistillation().init(jax.random.PRNGKey(0), np.zeros((1, 48, 48, 3), np.float32))


@pytest.fixture(scope="module")
def trained():
    method = ReverseDistillation()
    state, test, scores = train_and_score(method, category="wood", epochs=16)
    return method, state, test, scores


@pytest.mark.slow
def test_trained_model_scores_defects_above_normal_pixels(trained):
    method, state, test, scores = trained
    chex.assert_shape([scores.maps], [(len(test), 64, 64)])
    on_defect, off_defect = defect_contrast(test, scores)
    assert on_defect > off_defect
    assert pixel_auroc(test, scores) > 0.85
    np.testing.assert_allclose(scores.image, np.asarray(scores.maps).max(axis=(1, 2)),
                               rtol=1e-6)


@pytest.mark.slow
def test_loss_is_the_sum_of_per_scale_cosine_distances_and_images_score_independently(trained):
    method, state, test, scores = trained
    images = jnp.asarray(test.images[:2])
    loss, aux = jax.jit(method.loss)(state["params"], state, images, jax.random.PRNGKey(0))
    np.testing.assert_allclose(loss, sum(aux[f"cos_{t}"] for t in method.taps), rtol=1e-6)
    assert 0.0 < float(loss) < 3.0
    single = jax.jit(method.score)(state, images[1:2])
    np.testing.assert_allclose(single.maps[0], scores.maps[1], rtol=1e-4, atol=1e-5)
