"""PaDiM and semi-orthogonal PaDiM: embeddings against NumPy, the QR sign fix, localisation,
determinism, jit, errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_modeling_toy import batches_of, score_toy_test_set, toy_images, toy_test_set
from numpy_reference import torch_nearest
from sklearn.metrics import roc_auc_score

from anomjax.backbones import load_backbone
from anomjax.methods import make_method
from anomjax.methods.feature_modeling.padim import (
    PaDiM,
    SemiOrthogonalPaDiM,
    default_embedding_dim,
    default_feature_dim,
    default_taps,
    fit_gaussians,
    random_channel_index,
    semi_orthogonal_matrix,
)
from anomjax.nn.pyramid import concat_taps
from anomjax.types import Batch

# ---- embeddings against NumPy (fast) ------------------------------------------------------


@pytest.mark.parametrize("merge_images", [1, 3, 100])
def test_fit_gaussians_merging_batches_gives_numpys_moments(merge_images):
    """7 images in batches of 2, merged 1, 3 (crossing batch ends) or all at a time; the last
    batch of one image is padded, so the embedding only ever sees batches of 2."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(7, 2, 3, 3)).astype(np.float32)
    batch = Batch(images, np.zeros(7, np.int32), np.zeros((7, 2, 3), np.uint8),
                  tuple(f"{i}.png" for i in range(7)), ("good",) * 7)
    seen = []

    def embed(x):
        seen.append(len(x))
        return jnp.asarray(x) * 2.0 + 1.0

    fitted = fit_gaussians(embed, batches_of(batch, 2), 0.01, merge_images=merge_images)
    assert seen == [2, 2, 2, 2]
    feats = images.astype(np.float64) * 2.0 + 1.0  # [N, h, w, d]
    np.testing.assert_allclose(fitted["mean"], feats.mean(axis=0), rtol=1e-6)
    cov = np.stack([[np.cov(feats[:, i, j].T) + 0.01 * np.eye(3) for j in range(3)]
                    for i in range(2)])
    inv_chol = np.asarray(fitted["inv_chol"], np.float64)
    precision = np.swapaxes(inv_chol, -1, -2) @ inv_chol
    np.testing.assert_allclose(precision, np.linalg.inv(cov), rtol=1e-4, atol=1e-4)


def test_concat_taps_is_torch_nearest_replication_at_any_ratio():
    rng = np.random.default_rng(0)
    shapes = [("a", (2, 13, 10, 3)), ("b", (2, 7, 5, 4)), ("c", (2, 4, 3, 2))]  # 13 / 7, 10 / 3
    feats = {k: rng.normal(size=shape).astype(np.float32) for k, shape in shapes}
    got = np.asarray(concat_taps({k: jnp.asarray(v) for k, v in feats.items()}, ("a", "b", "c")))
    want = np.concatenate([feats["a"], torch_nearest(feats["b"], (13, 10)),
                           torch_nearest(feats["c"], (13, 10))], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # integer ratio: every coarse cell copied over the 2 x 2 fine cells it covers
    up = np.asarray(concat_taps({"a": jnp.zeros((1, 4, 4, 1)), "b": jnp.asarray(
        feats["c"][:1, :2, :2])}, ("a", "b")))[0, :, :, 1:]
    np.testing.assert_array_equal(up, np.kron(feats["c"][0, :2, :2], np.ones((2, 2, 1))))


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0")


def test_padim_and_so_padim_embeddings_match_numpy(lite0):
    backbone, variables = lite0
    images = toy_images(2, size=32).images
    feats = {t: np.asarray(v) for t, v in backbone.features(
        variables, images, taps=("stage2", "stage3", "stage5")).items()}
    grid = feats["stage2"].shape[1:3]
    stacked = np.concatenate([feats["stage2"], torch_nearest(feats["stage3"], grid),
                              torch_nearest(feats["stage5"], grid)], axis=-1)  # [2, 8, 8, 176]
    index = np.array([0, 5, 23, 24, 63, 64, 175])  # across all three taps
    got = PaDiM().embed(variables, jnp.asarray(index, jnp.int32), images)
    np.testing.assert_allclose(np.asarray(got), stacked[..., index], rtol=1e-5, atol=1e-5)
    w = np.asarray(semi_orthogonal_matrix(jax.random.key(0), 176, 7), np.float64)
    got = SemiOrthogonalPaDiM().embed(variables, jnp.asarray(w, jnp.float32), images)
    np.testing.assert_allclose(np.asarray(got), stacked @ w, rtol=1e-4, atol=1e-4)


def test_semi_orthogonal_matrix_is_the_sign_fixed_q_factor():
    key = jax.random.key(3)
    w = np.asarray(semi_orthogonal_matrix(key, 144, 24), np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(24), atol=1e-5)
    # G = W R with R upper triangular and a positive diagonal: the unique (Haar) Q factor.
    g = np.asarray(jax.random.normal(key, (144, 24), jnp.float32), np.float64)
    r = w.T @ g
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-4)
    assert (np.diag(r) > 0).all()
    with pytest.raises(ValueError, match="0 < k <= 144"):
        semi_orthogonal_matrix(key, 144, 200)


def test_paper_defaults_and_lite_mapping():
    assert default_taps("resnet18") == ("layer1", "layer2", "layer3")
    assert default_taps("efficientnet_lite0") == ("stage2", "stage3", "stage5")
    assert default_feature_dim("resnet18", 448) == 100
    assert default_feature_dim("wide_resnet50_2", 1792) == 550
    assert default_feature_dim("efficientnet_lite0", 176) == 176
    assert default_embedding_dim("resnet18", 448) == 100
    assert default_embedding_dim("wide_resnet50_2", 1792) == 300
    assert default_embedding_dim("efficientnet_lite0", 176) == 29
    for method in (PaDiM(), SemiOrthogonalPaDiM()):
        assert (method.epsilon, method.sigma) == (0.01, 4.0)
    index = np.asarray(random_channel_index(jax.random.PRNGKey(1), 144, 44))
    assert len(set(index.tolist())) == 44 and (np.diff(index) > 0).all() and index.max() < 144


@pytest.mark.parametrize("name", ["padim", "so_padim"])
def test_bad_taps_are_named(name):
    with pytest.raises(ValueError, match=r"taps=\('stage2', 'layer2'\).*no tap\(s\) \['layer2'\]"):
        make_method(name, {"taps": "stage2,layer2"})
    with pytest.raises(ValueError, match=r"fine to coarse.*strides are \[16, 4\]"):
        make_method(name, {"taps": "stage5,stage2"})


# ---- the methods (one fit per module) -----------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    method = PaDiM(n_features=54)  # a strict subset, so that seeds draw different channels
    state = method.fit(jax.random.PRNGKey(0), batches_of(toy_images(12), 6))
    return method, state


@pytest.mark.slow
def test_state_shapes(fitted):
    _, state = fitted
    chex.assert_shape(state["mean"], (16, 16, 54))  # 64 px input, stride-4 grid
    chex.assert_shape(state["inv_chol"], (16, 16, 54, 54))
    chex.assert_shape(state["channel_index"], (54,))
    chol = np.asarray(state["inv_chol"][3, 5])
    assert np.allclose(np.triu(chol, 1), 0.0) and (np.diag(chol) > 0).all()


@pytest.mark.slow
def test_defect_pixels_score_above_normal_ones(fitted):
    method, state = fitted
    test, maps, image = score_toy_test_set(method, state)
    assert roc_auc_score(test.masks.ravel(), maps.ravel()) > 0.95
    assert image[4:].min() > image[:4].max()
    np.testing.assert_allclose(image, maps.max(axis=(1, 2)), rtol=1e-6)


@pytest.mark.slow
def test_jit_matches_eager(fitted):
    method, state = fitted
    images = toy_test_set().images[2:6]
    eager = method.score(state, images)
    jitted = jax.jit(method.score)(state, images)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_same_seed_same_state_other_seed_other_channels(fitted):
    method, state = fitted
    again = method.fit(jax.random.PRNGKey(0), batches_of(toy_images(12), 6))
    chex.assert_trees_all_equal(state, again)
    other = method.fit(jax.random.PRNGKey(7), batches_of(toy_images(12), 6))
    assert not np.array_equal(other["channel_index"], state["channel_index"])


@pytest.mark.slow
def test_overrides_and_clear_errors(fitted):
    method, state = fitted
    small = make_method("padim", {"n_features": "10", "taps": "stage2,stage3"})
    so = make_method("so_padim", {"k": "7"})
    assert isinstance(so, SemiOrthogonalPaDiM) and so.k == 7
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


@pytest.mark.slow
def test_save_load_round_trip_scores_identically(fitted, tmp_path):
    from anomjax.run_folder import load_run, save_run

    method, state = fitted
    save_run(tmp_path / "run", method, state, {"image_size": 64})
    loaded_method, loaded_state, _ = load_run(tmp_path / "run")
    assert loaded_method == method
    images = toy_test_set().images[3:5]
    chex.assert_trees_all_equal(method.score(state, images),
                                loaded_method.score(loaded_state, images))


@pytest.fixture(scope="module")
def train():
    return batches_of(toy_images(10), 5)


@pytest.mark.slow
def test_so_padim_localises_defects_deterministically(train):
    method = SemiOrthogonalPaDiM()
    state = method.fit(jax.random.PRNGKey(0), train)
    chex.assert_shape(state["embedding"], (176, 29))
    chex.assert_shape(state["inv_chol"], (16, 16, 29, 29))
    test = toy_test_set()
    scores = jax.jit(method.score)(state, test.images)
    eager = method.score(state, test.images)
    chex.assert_trees_all_close(scores, eager, rtol=1e-4, atol=1e-3)
    assert roc_auc_score(test.masks.ravel(), np.asarray(scores.maps).ravel()) > 0.95
    assert np.asarray(scores.image)[4:].min() > np.asarray(scores.image)[:4].max()
    chex.assert_trees_all_equal(state, method.fit(jax.random.PRNGKey(0), train))


@pytest.mark.slow
def test_full_rank_embedding_equals_padim_on_all_channels(train):
    """With k = F, W is orthogonal and W^T (S + eps I) W leaves Mahalanobis distances intact."""
    so = SemiOrthogonalPaDiM(k=176, sigma=0.0)
    padim = PaDiM(n_features=176, sigma=0.0)
    images = toy_test_set().images[3:5]
    so_maps = so.score(so.fit(jax.random.PRNGKey(0), train), images).maps
    padim_maps = padim.score(padim.fit(jax.random.PRNGKey(0), train), images).maps
    np.testing.assert_allclose(np.asarray(so_maps), np.asarray(padim_maps), rtol=2e-3, atol=2e-3)
