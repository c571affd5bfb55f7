"""SPADE: image retrieval, pixel kNN against a NumPy reference, localisation, determinism."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from feature_modeling_toy import batches_of, toy_images, toy_test_set
from sklearn.metrics import roc_auc_score

from anomjax.methods import make_method
from anomjax.methods.feature_modeling.spade import SPADE
from anomjax.scoring import upsample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted():
    method = SPADE(image_neighbours=3, sigma=0.0, storage_dtype="float32")
    state = method.fit(jax.random.PRNGKey(0), batches_of(toy_images(10), 4))
    return method, state


@pytest.fixture(scope="module")
def paper():
    """The paper's settings: K = 50 (capped at the 10 training images), float16, sigma 4."""
    method = SPADE()
    return method, method.fit(jax.random.PRNGKey(0), batches_of(toy_images(10), 4))


def test_state_holds_descriptors_and_pyramid(fitted):
    _, state = fitted
    chex.assert_shape(state["image_features"], (10, 320))  # Lite0 stage7, pooled
    chex.assert_shape(state["pyramid"], (10, 16, 16, 176))  # stage2-4 at stride 4


def test_scores_match_numpy_reference(fitted):
    method, state = fitted
    images = toy_test_set().images[3:5]
    scores = method.score(state, images)
    descriptor, pyramid = method.describe(state["backbone"], images)
    train_desc = np.asarray(state["image_features"], np.float64)
    train_pyr = np.asarray(state["pyramid"], np.float64)
    for b in range(2):
        dist = np.linalg.norm(train_desc - np.asarray(descriptor[b], np.float64), axis=1)
        nearest = np.argsort(dist)[:3]
        np.testing.assert_allclose(scores.image[b], dist[nearest].mean(), rtol=1e-4)
        gallery = train_pyr[nearest].reshape(-1, 176)
        queries = np.asarray(pyramid[b], np.float64).reshape(-1, 176)
        d2 = (queries**2).sum(1)[:, None] - 2 * queries @ gallery.T + (gallery**2).sum(1)
        patch = np.sqrt(np.maximum(d2.min(axis=1), 0)).reshape(1, 16, 16)
        expected = np.asarray(upsample(patch.astype(np.float32), (64, 64)))[0]
        np.testing.assert_allclose(scores.maps[b], expected, rtol=1e-3, atol=1e-3)


def test_localises_defects_jitted_and_float16(paper):
    method, state = paper
    test = toy_test_set()
    assert state["pyramid"].dtype == np.float16
    scores = jax.jit(method.score)(state, test.images)
    assert roc_auc_score(test.masks.ravel(), np.asarray(scores.maps).ravel()) > 0.95
    assert np.asarray(scores.image)[4:].min() > np.asarray(scores.image)[:4].max()
    eager = method.score(state, test.images)
    chex.assert_trees_all_close(scores, eager, rtol=1e-4, atol=1e-3)
    again = method.fit(jax.random.PRNGKey(0), batches_of(toy_images(10), 4))
    chex.assert_trees_all_equal(state, again)


def test_overrides_and_errors(fitted):
    method, state = fitted
    assert make_method("spade", {"image_neighbours": "5"}).image_neighbours == 5
    coarse = SPADE(grid_stride=8)
    _, pyramid = coarse.describe(state["backbone"], np.zeros((1, 64, 64, 3), np.float32))
    chex.assert_shape(pyramid, (1, 8, 8, 176))
    with pytest.raises(ValueError, match="fit size"):
        method.score(state, np.zeros((1, 96, 96, 3), np.float32))
    with pytest.raises(ValueError, match="storage_dtype"):
        SPADE(storage_dtype="int8").fit(jax.random.PRNGKey(0), batches_of(toy_images(2), 2))
    with pytest.raises(ValueError, match="no training images"):
        SPADE().fit(jax.random.PRNGKey(0), [])


def test_save_load_round_trip_keeps_float16_pyramid(paper, tmp_path):
    from anomjax.checkpoint import load_run, save_run

    method, state = paper
    save_run(tmp_path / "run", method, state, {"image_size": 64})
    loaded_method, loaded_state, _ = load_run(tmp_path / "run")
    assert loaded_method == method and loaded_state["pyramid"].dtype == np.float16
    images = toy_test_set().images[3:5]
    chex.assert_trees_all_equal(method.score(state, images),
                                loaded_method.score(loaded_state, images))
