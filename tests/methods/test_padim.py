"""PaDiM on tiny striped images: shapes, localisation, determinism, jit, errors."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from feature_modeling_toy import batches_of, toy_images, toy_test_set
from sklearn.metrics import roc_auc_score

from anomjax.methods import make_method
from anomjax.methods.feature_modeling.padim import (
    PaDiM,
    default_feature_dim,
    default_taps,
    random_channel_index,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted():
    method = PaDiM()
    state = method.fit(jax.random.PRNGKey(0), batches_of(toy_images(12), 6))
    return method, state


def test_paper_defaults_and_lite_mapping():
    assert default_taps("resnet18") == ("layer1", "layer2", "layer3")
    assert default_taps("efficientnet_lite0") == ("stage2", "stage3", "stage5")
    assert default_feature_dim("resnet18", 448) == 100
    assert default_feature_dim("wide_resnet50_2", 1792) == 550
    assert default_feature_dim("efficientnet_lite0", 176) == 54
    index = np.asarray(random_channel_index(jax.random.PRNGKey(1), 144, 44))
    assert len(set(index.tolist())) == 44 and (np.diff(index) > 0).all() and index.max() < 144


def test_state_shapes(fitted):
    _, state = fitted
    chex.assert_shape(state["mean"], (16, 16, 54))  # 64 px input, stride-4 grid
    chex.assert_shape(state["chol"], (16, 16, 54, 54))
    chex.assert_shape(state["channel_index"], (54,))
    chol = np.asarray(state["chol"][3, 5])
    assert np.allclose(np.triu(chol, 1), 0.0) and (np.diag(chol) > 0).all()


def test_defect_pixels_score_above_normal_ones(fitted):
    method, state = fitted
    test = toy_test_set()
    scores = method.score(state, test.images)
    chex.assert_shape(scores.maps, (8, 64, 64))
    maps, image = np.asarray(scores.maps), np.asarray(scores.image)
    assert roc_auc_score(test.masks.ravel(), maps.ravel()) > 0.95
    assert image[4:].min() > image[:4].max()
    np.testing.assert_allclose(image, maps.max(axis=(1, 2)), rtol=1e-6)


def test_jit_matches_eager(fitted):
    method, state = fitted
    images = toy_test_set().images[2:6]
    eager = method.score(state, images)
    jitted = jax.jit(method.score)(state, images)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-4, atol=1e-3)


def test_same_seed_same_state_other_seed_other_channels(fitted):
    method, state = fitted
    again = method.fit(jax.random.PRNGKey(0), batches_of(toy_images(12), 6))
    chex.assert_trees_all_equal(state, again)
    other = method.fit(jax.random.PRNGKey(7), batches_of(toy_images(12), 6))
    assert not np.array_equal(other["channel_index"], state["channel_index"])


def test_overrides_and_clear_errors(fitted):
    method, state = fitted
    small = make_method("padim", {"n_features": "10", "taps": "stage2,stage3"})
    assert small.n_features == 10 and small.feature_taps == ("stage2", "stage3")
    with pytest.raises(ValueError, match="fit image size"):
        method.score(state, np.zeros((1, 96, 96, 3), np.float32))
    with pytest.raises(ValueError, match="no training images"):
        method.fit(jax.random.PRNGKey(0), [])
    mixed = batches_of(toy_images(2), 2) + batches_of(toy_images(2, size=32), 2)
    with pytest.raises(ValueError, match="toy_good_0_0.png"):
        method.fit(jax.random.PRNGKey(0), mixed)
    nan = toy_images(2)
    nan.images[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="toy_good_0_1.png"):
        method.fit(jax.random.PRNGKey(0), [nan])


def test_save_load_round_trip_scores_identically(fitted, tmp_path):
    from anomjax.checkpoint import load_run, save_run

    method, state = fitted
    save_run(tmp_path / "run", method, state, {"image_size": 64})
    loaded_method, loaded_state, _ = load_run(tmp_path / "run")
    assert loaded_method == method
    images = toy_test_set().images[3:5]
    chex.assert_trees_all_equal(method.score(state, images),
                                loaded_method.score(loaded_state, images))
