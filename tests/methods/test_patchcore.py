"""PatchCore on tiny striped images, and its patch-feature building blocks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_modeling_toy import batches_of, toy_images, toy_test_set
from sklearn.metrics import roc_auc_score

from anomjax.methods import make_method
from anomjax.methods.feature_modeling.patchcore import (
    PatchCore,
    _softmax_weight,
    default_layers,
)
from anomjax.nn.patch_features import (
    adaptive_avg_pool_matrix,
    aligned_neighbourhood_features,
    compact_basis,
    neighbourhood_average,
    pooling_matrix,
)

# ---- patch features (fast) -------------------------------------------------------------


def test_adaptive_pool_matches_pytorch_windows():
    x = np.arange(10.0)
    pooled = x @ adaptive_avg_pool_matrix(10, 4)  # torch windows [0,3) [2,5) [5,8) [7,10)
    np.testing.assert_allclose(pooled, [1.0, 3.0, 6.0, 8.0])
    up = x[:3] @ adaptive_avg_pool_matrix(3, 5)  # [0,1) [0,2) [1,2) [1,3) [2,3)
    np.testing.assert_allclose(up, [0.0, 0.5, 1.0, 1.5, 2.0])


def test_pooling_matrix_is_the_two_stage_pooling():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 40)), rng.normal(size=(6, 112))
    staged = np.concatenate([a @ adaptive_avg_pool_matrix(40, 1024),
                             b @ adaptive_avg_pool_matrix(112, 1024)], axis=1)
    staged = staged @ adaptive_avg_pool_matrix(2048, 1024)
    np.testing.assert_allclose(np.concatenate([a, b], 1) @ pooling_matrix((40, 112)), staged,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("channels", "dim"), [((40, 112), 1024), ((96, 160), 128)])
def test_compact_basis_is_an_isometry_of_the_pooled_features(channels, dim):
    w = pooling_matrix(channels, dim, dim)
    basis = compact_basis(w)
    assert basis.shape == (sum(channels), min(sum(channels), dim))
    x = np.random.default_rng(1).normal(size=(8, sum(channels)))
    full = np.linalg.norm((x[:, None] - x[None]) @ w, axis=-1)
    compact = np.linalg.norm((x[:, None] - x[None]) @ basis, axis=-1)
    np.testing.assert_allclose(compact, full, rtol=1e-8, atol=1e-10)


def test_neighbourhood_average_and_alignment():
    x = np.random.default_rng(2).normal(size=(2, 5, 6, 3)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(padded[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3)) / 9
    np.testing.assert_allclose(np.asarray(neighbourhood_average(jnp.asarray(x))), ref, atol=1e-6)
    deep = np.random.default_rng(3).normal(size=(2, 3, 3, 4)).astype(np.float32)
    out = aligned_neighbourhood_features([jnp.asarray(x), jnp.asarray(deep)])
    chex.assert_shape(out, (2, 5, 6, 7))
    np.testing.assert_allclose(np.asarray(out[..., :3]), ref, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        neighbourhood_average(jnp.asarray(x), 2)


def test_softmax_weight_is_the_papers_formula():
    rng = np.random.default_rng(4)
    m_star, support = rng.normal(size=(3, 5)), rng.normal(size=(3, 9, 5))
    s_star = np.linalg.norm(m_star - support[:, 0], axis=1)
    d = np.linalg.norm(m_star[:, None] - support, axis=-1)
    ref = (1 - np.exp(s_star) / np.exp(d).sum(1)) * s_star
    got = _softmax_weight(jnp.asarray(s_star, jnp.float32), jnp.asarray(m_star, jnp.float32),
                          jnp.asarray(support, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)


def test_defaults_and_validation():
    assert default_layers("wide_resnet50_2") == ("layer2", "layer3")
    assert default_layers("efficientnet_lite0") == ("stage3", "stage5")
    assert PatchCore().coreset_ratio == 0.1 and PatchCore().num_neighbours == 9
    assert make_method("patchcore", {"coreset_ratio": "0.01"}).coreset_ratio == 0.01
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="bank_dtype"):
        PatchCore(bank_dtype="float16")
    with pytest.raises(ValueError, match="shallow to deep"):
        _ = PatchCore(layers=("stage5", "stage3")).feature_layers


# ---- the method (one fit per module) ----------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    method = PatchCore(coreset_ratio=0.25, progress=False)
    state = method.fit(jax.random.key(0), batches_of(toy_images(6), 3))
    return method, state


@pytest.mark.slow
def test_state_and_bank_size(fitted):
    method, state = fitted
    # 6 images of 64 px, stride-8 grid of 8 x 8 patches, 25 % kept; 40 + 112 channels.
    chex.assert_shape(state["bank"], (int(6 * 64 * 0.25), 152))
    chex.assert_shape(state["basis"], (152, 152))
    assert set(state) == {"backbone", "basis", "bank"}


@pytest.mark.slow
def test_defect_pixels_score_above_normal_ones(fitted):
    method, state = fitted
    test = toy_test_set()
    scores = method.score(state, test.images)
    chex.assert_shape(scores.maps, (8, 64, 64))
    maps = np.asarray(scores.maps)
    assert roc_auc_score(test.masks.ravel(), maps.ravel()) > 0.9
    assert roc_auc_score(test.labels, np.asarray(scores.image)) == 1.0
    assert np.isfinite(maps).all()
    jitted = jax.jit(method.score)(state, test.images)
    np.testing.assert_allclose(np.asarray(jitted.maps), maps, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(jitted.image), np.asarray(scores.image), rtol=1e-4)


@pytest.mark.slow
def test_same_seed_same_bank_and_bf16_bank(fitted):
    method, state = fitted
    again = method.fit(jax.random.key(0), batches_of(toy_images(6), 3))
    np.testing.assert_array_equal(np.asarray(again["bank"]), np.asarray(state["bank"]))
    rebatched = method.fit(jax.random.key(0), batches_of(toy_images(6), 2))  # conv rounding only
    np.testing.assert_allclose(np.asarray(rebatched["bank"]), np.asarray(state["bank"]),
                               atol=1e-4)
    other = method.fit(jax.random.key(1), batches_of(toy_images(6), 3))
    assert not np.array_equal(np.asarray(other["bank"]), np.asarray(state["bank"]))
    test = toy_test_set()
    half = PatchCore(coreset_ratio=0.25, bank_dtype="bfloat16", progress=False)
    state16 = dict(state, bank=state["bank"].astype(jnp.bfloat16))
    a, b = method.score(state, test.images), half.score(state16, test.images)
    np.testing.assert_allclose(np.asarray(b.maps), np.asarray(a.maps), rtol=2e-2, atol=0.2)


@pytest.mark.slow
def test_bad_images_are_named(fitted):
    method, state = fitted
    with pytest.raises(ValueError, match="float"):
        method.score(state, np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        method.fit(jax.random.key(0), [])
