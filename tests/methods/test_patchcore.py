"""PatchCore on tiny striped images, and its patch-feature building blocks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_modeling_toy import batches_of, score_toy_test_set, toy_images, toy_test_set
from numpy_reference import adaptive_avg_pool1d, euclidean, torch_bilinear, unfold
from sklearn.metrics import roc_auc_score

from anomjax.methods import make_method
from anomjax.methods.feature_modeling.patchcore import (
    PatchCore,
    _softmax_weight,
    default_layers,
    reweighted_image_score,
)
from anomjax.nn.patch_features import (
    adaptive_avg_pool_matrix,
    compact_basis,
    compact_patch_basis,
    local_patch_features,
    patch_pooling_matrix,
)

# ---- patch features (fast) -------------------------------------------------------------


def test_adaptive_pool_matches_pytorch_windows():
    x = np.arange(10.0)
    pooled = x @ adaptive_avg_pool_matrix(10, 4)  # torch windows [0,3) [2,5) [5,8) [7,10)
    np.testing.assert_allclose(pooled, [1.0, 3.0, 6.0, 8.0])
    up = x[:3] @ adaptive_avg_pool_matrix(3, 5)  # [0,1) [0,2) [1,2) [1,3) [2,3)
    np.testing.assert_allclose(up, [0.0, 0.5, 1.0, 1.5, 2.0])


def official_patch_features(maps: list[np.ndarray], layer_dim: int, target_dim: int,
                            aggregation: str) -> np.ndarray:
    """NumPy of patchcore-inspection's recipe ``[N, target_dim]`` (or anomalib's 3x3 mean).

    ``"patch"``: ``PatchMaker.patchify`` (Unfold 3x3, zero padding), every ``C x 3 x 3`` value
    of the deeper layers bilinearly interpolated to the first grid, ``MeanMapper`` (flatten
    channel-major, ``adaptive_avg_pool1d`` to ``layer_dim``), ``Aggregator`` (flatten the
    layers, ``adaptive_avg_pool1d`` to ``target_dim``). ``"mean"``: the 3x3 mean first.
    """
    b, h, w = maps[0].shape[:3]
    pooled = []
    for x in maps:
        patches = unfold(x, 3)  # [B, h_i, w_i, C, 3, 3]
        if aggregation == "mean":
            patches = patches.mean(axis=(-2, -1))
        patches = patches.reshape(*patches.shape[:3], -1)
        if patches.shape[1:3] != (h, w):
            patches = torch_bilinear(patches, (h, w))
        pooled.append(adaptive_avg_pool1d(patches.reshape(b * h * w, -1), layer_dim))
    return adaptive_avg_pool1d(np.concatenate(pooled, axis=1), target_dim)


@pytest.mark.parametrize("aggregation", ["patch", "mean"])
@pytest.mark.parametrize(("channels", "dims"), [((4, 6), (1024, 1024)), ((24, 40), (64, 48))])
def test_patch_features_match_the_official_recipe(aggregation, channels, dims):
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(2, 6, 5, channels[0])), rng.normal(size=(2, 3, 3, channels[1]))]
    want = official_patch_features(maps, *dims, aggregation)
    basis = compact_patch_basis(channels, *dims, 3, aggregation)
    got = local_patch_features([jnp.asarray(m, jnp.float32) for m in maps], jnp.asarray(basis))
    got = np.asarray(got).reshape(-1, basis.shape[1])
    assert basis.shape[1] <= dims[1]
    np.testing.assert_allclose(euclidean(got, got), euclidean(want, want), rtol=1e-4,
                               atol=1e-4)


def test_official_recipe_keeps_the_taps_apart_on_lite0():
    # Lite0 stage3 + stage5: 9 x 40 and 9 x 112 values per patch pooled to 1024 each.
    assert compact_patch_basis((40, 112), aggregation="patch").shape == (1368, 872)
    assert compact_patch_basis((40, 112), aggregation="mean").shape == (1368, 152)


@pytest.mark.parametrize("aggregation", ["patch", "mean"])
def test_compact_basis_is_an_isometry_of_the_pooled_features(aggregation):
    w = patch_pooling_matrix((8, 16), 128, 96, 3, aggregation)
    basis = compact_basis(w)
    x = np.random.default_rng(1).normal(size=(8, w.shape[0]))
    full = np.linalg.norm((x[:, None] - x[None]) @ w, axis=-1)
    compact = np.linalg.norm((x[:, None] - x[None]) @ basis, axis=-1)
    np.testing.assert_allclose(compact, full, rtol=1e-8, atol=1e-10)
    assert basis.shape[1] == np.linalg.matrix_rank(w)


def test_even_patch_size_is_rejected():
    with pytest.raises(ValueError, match="patch_size=4 must be odd"):
        PatchCore(patch_size=4)


def test_softmax_weight_is_the_papers_formula():
    rng = np.random.default_rng(4)
    m_star, support = rng.normal(size=(3, 5)), rng.normal(size=(3, 9, 5))
    s_star = np.linalg.norm(m_star - support[:, 0], axis=1)
    d = np.linalg.norm(m_star[:, None] - support, axis=-1)
    ref = (1 - np.exp(s_star) / np.exp(d).sum(1)) * s_star
    got = _softmax_weight(jnp.asarray(s_star, jnp.float32), jnp.asarray(m_star, jnp.float32),
                          jnp.asarray(support, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)


def eq7_case():
    """Two test patches, a bank whose ``b = 3`` neighbours of ``n*`` are not those of ``m*``.

    ``m* = (3, 0)``'s nearest entry is ``n* = (0, 0)``; three entries lie close to ``n*`` on
    the far side, and three lie just beyond distance 3 of ``m*`` (near ``m*``, far from
    ``n*``), so ``N_3(n*)`` and ``N_3(m*)`` differ.
    """
    bank = np.array([[0.0, 0.0], [-0.2, 0.0], [-0.3, 0.1], [-0.3, -0.1],
                     [3.0, 3.05], [3.0, -3.05], [6.05, 0.0]])
    patches = np.array([[[3.0, 0.0], [0.5, 0.0]]])  # [B=1, P=2, K=2]
    dist = euclidean(patches[0], bank)
    return patches, bank, dist.min(1)[None], dist.argmin(1)[None]


def test_image_score_is_eq7_over_the_neighbours_of_n_star():
    patches, bank, patch_dist, patch_index = eq7_case()
    m_star, s_star = patches[0, 0], patch_dist[0, 0]
    n_star = bank[patch_index[0, 0]]

    def eq7(centre):
        support = bank[np.argsort(euclidean(centre[None], bank)[0])[:3]]
        d = euclidean(m_star[None], support)[0]
        return (1 - np.exp(s_star) / np.exp(d).sum()) * s_star

    want, wrong = eq7(n_star), eq7(m_star)
    assert abs(want - wrong) > 0.05  # the case tells the two apart
    args = (jnp.asarray(patch_dist, jnp.float32), jnp.asarray(patch_index, jnp.int32),
            jnp.asarray(patches, jnp.float32), jnp.asarray(bank, jnp.float32))
    got = reweighted_image_score(*args, 3, max_block_bytes=2**20)
    np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-5)
    plain = reweighted_image_score(*args, 1, max_block_bytes=2**20)  # b = 1: the plain max
    np.testing.assert_allclose(np.asarray(plain), [s_star], rtol=1e-6)
    with pytest.raises(ValueError, match="num_neighbours"):
        reweighted_image_score(*args, 0, max_block_bytes=2**20)


def test_defaults_and_validation():
    method = PatchCore()  # the paper's settings (and the authors' aggregation)
    assert (method.coreset_ratio, method.num_neighbours, method.sigma, method.patch_size,
            method.layer_dim, method.target_dim, method.projection_dim,
            method.aggregation) == (0.1, 9, 4.0, 3, 1024, 1024, 128, "patch")
    assert default_layers("wide_resnet50_2") == ("layer2", "layer3")
    assert default_layers("efficientnet_lite0") == ("stage3", "stage5")
    assert make_method("patchcore", {"coreset_ratio": "0.01"}).coreset_ratio == 0.01
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="bank_dtype"):
        PatchCore(bank_dtype="float16")
    with pytest.raises(ValueError, match="num_neighbours=0 must be in"):
        PatchCore(num_neighbours=0)
    with pytest.raises(ValueError, match="aggregation"):
        PatchCore(aggregation="max")
    with pytest.raises(ValueError, match="fine to coarse"):
        PatchCore(layers=("stage5", "stage3"))
    with pytest.raises(ValueError, match=r"no tap\(s\) \['layer2'\]"):
        PatchCore(layers=("layer2", "stage5"))


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
    chex.assert_shape(state["bank"], (int(6 * 64 * 0.25), 872))
    chex.assert_shape(state["basis"], (9 * 152, 872))
    assert set(state) == {"backbone", "basis", "bank"}


@pytest.mark.slow
def test_defect_pixels_score_above_normal_ones(fitted):
    method, state = fitted
    test, maps, image = score_toy_test_set(method, state)
    assert roc_auc_score(test.masks.ravel(), maps.ravel()) > 0.9
    assert roc_auc_score(test.labels, image) == 1.0
    assert np.isfinite(maps).all()
    # no colour cue: stripes of another period and angle
    texture, texture_maps, _ = score_toy_test_set(method, state, subtle=True)
    assert roc_auc_score(texture.masks.ravel(), texture_maps.ravel()) > 0.97
    jitted = jax.jit(method.score)(state, test.images)
    np.testing.assert_allclose(np.asarray(jitted.maps), maps, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(jitted.image), image, rtol=1e-4)


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
