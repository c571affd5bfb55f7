"""Semi-orthogonal PaDiM: the embedding, its equivalence to PaDiM at full rank, localisation."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from feature_modeling_toy import batches_of, toy_images, toy_test_set
from sklearn.metrics import roc_auc_score

from anomjax.methods.feature_modeling.padim import PaDiM
from anomjax.methods.feature_modeling.so_padim import (
    SemiOrthogonalPaDiM,
    default_embedding_dim,
    semi_orthogonal_matrix,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train():
    return batches_of(toy_images(10), 5)


def test_semi_orthogonal_matrix_and_paper_defaults():
    w = np.asarray(semi_orthogonal_matrix(jax.random.PRNGKey(0), 144, 24), np.float64)
    assert w.shape == (144, 24)
    np.testing.assert_allclose(w.T @ w, np.eye(24), atol=1e-5)
    same = np.asarray(semi_orthogonal_matrix(jax.random.PRNGKey(0), 144, 24))
    np.testing.assert_array_equal(w.astype(np.float32), same)
    assert default_embedding_dim("resnet18", 448) == 100
    assert default_embedding_dim("wide_resnet50_2", 1792) == 300
    assert default_embedding_dim("efficientnet_lite0", 176) == 29
    with pytest.raises(ValueError, match="0 < k <= 144"):
        semi_orthogonal_matrix(jax.random.PRNGKey(0), 144, 200)


def test_localises_defects_deterministically(train):
    method = SemiOrthogonalPaDiM()
    state = method.fit(jax.random.PRNGKey(0), train)
    chex.assert_shape(state["embedding"], (176, 29))
    chex.assert_shape(state["chol"], (16, 16, 29, 29))
    test = toy_test_set()
    scores = jax.jit(method.score)(state, test.images)
    eager = method.score(state, test.images)
    chex.assert_trees_all_close(scores, eager, rtol=1e-4, atol=1e-3)
    assert roc_auc_score(test.masks.ravel(), np.asarray(scores.maps).ravel()) > 0.95
    assert np.asarray(scores.image)[4:].min() > np.asarray(scores.image)[:4].max()
    chex.assert_trees_all_equal(state, method.fit(jax.random.PRNGKey(0), train))


def test_full_rank_embedding_equals_padim_on_all_channels(train):
    """With k = F, W is orthogonal and W^T (S + eps I) W leaves Mahalanobis distances intact."""
    so = SemiOrthogonalPaDiM(k=176, sigma=0.0)
    padim = PaDiM(n_features=176, sigma=0.0)
    images = toy_test_set().images[3:5]
    so_maps = so.score(so.fit(jax.random.PRNGKey(0), train), images).maps
    padim_maps = padim.score(padim.fit(jax.random.PRNGKey(0), train), images).maps
    np.testing.assert_allclose(np.asarray(so_maps), np.asarray(padim_maps), rtol=2e-3, atol=2e-3)
