"""SPADE: descriptors and both pyramid readings against NumPy, localisation, determinism."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from feature_modeling_toy import batches_of, toy_images, toy_test_set
from numpy_reference import euclidean, torch_bilinear
from sklearn.metrics import roc_auc_score

from anomjax.backbones import get_backbone
from anomjax.methods import make_method
from anomjax.methods.feature_modeling.spade import SPADE, default_image_tap

pytestmark = pytest.mark.slow
TAPS = ("stage2", "stage3", "stage5")


def test_paper_defaults():
    method = SPADE()
    assert (method.image_neighbours, method.pixel_neighbours, method.sigma,
            method.pyramid, method.grid_stride) == (50, 1, 4.0, "per_layer", 0)
    assert default_image_tap("wide_resnet50_2") == "layer4"
    assert method.descriptor_tap == "head" and method.pyramid_taps == TAPS
    with pytest.raises(ValueError, match="pyramid='joint' must be one of"):
        SPADE(pyramid="joint")
    with pytest.raises(ValueError, match=r"image_tap=\('layer4',\).*no tap"):
        SPADE(image_tap="layer4")


@pytest.fixture(scope="module")
def train():
    return batches_of(toy_images(10), 4)


@pytest.fixture(scope="module", params=["per_layer", "concatenated"])
def fitted(request, train):
    method = SPADE(image_neighbours=3, sigma=0.0, storage_dtype="float32",
                   pyramid=request.param)
    return method, method.fit(jax.random.PRNGKey(0), train)


def numpy_describe(variables, images, pyramid):
    """Pooled head descriptors and the pyramid, from the backbone's raw taps, in NumPy."""
    feats = {k: np.asarray(v, np.float64) for k, v in get_backbone("efficientnet_lite0").features(
        variables, images, taps=(*TAPS, "head")).items()}
    descriptor = feats["head"].mean(axis=(1, 2))
    layers = {t: feats[t] for t in TAPS}
    if pyramid == "per_layer":
        return descriptor, layers
    grid = layers["stage2"].shape[1:3]
    return descriptor, np.concatenate([layers["stage2"], torch_bilinear(layers["stage3"], grid),
                                       torch_bilinear(layers["stage5"], grid)], axis=-1)


def test_descriptors_and_pyramid_match_numpy(fitted):
    method, state = fitted
    images = toy_test_set().images[3:5]
    descriptor, pyramid = method.describe(state["backbone"], images)
    want_desc, want_pyr = numpy_describe(state["backbone"], images, method.pyramid)
    chex.assert_shape(descriptor, (2, 1280))
    np.testing.assert_allclose(np.asarray(descriptor), want_desc, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, pyramid), want_pyr, rtol=1e-4,
                                atol=1e-4)
    if method.pyramid == "per_layer":
        assert {t: v.shape for t, v in state["pyramid"].items()} == {
            "stage2": (10, 16, 16, 24), "stage3": (10, 8, 8, 40), "stage5": (10, 4, 4, 112)}
    else:
        chex.assert_shape(state["pyramid"], (10, 16, 16, 176))


def test_scores_match_numpy_reference(fitted):
    """Retrieval, gallery and pixel kNN in NumPy; maps upsampled by PyTorch's bilinear rule."""
    method, state = fitted
    images = toy_test_set().images[3:5]
    scores = method.score(state, images)
    descriptor, pyramid = numpy_describe(state["backbone"], images, method.pyramid)
    train_desc = np.asarray(state["image_features"], np.float64)
    train_pyr = jax.tree.map(lambda x: np.asarray(x, np.float64), state["pyramid"])
    layers = TAPS if method.pyramid == "per_layer" else (None,)
    for b in range(2):
        dist = euclidean(descriptor[b:b + 1], train_desc)[0]
        nearest = np.argsort(dist)[:3]
        np.testing.assert_allclose(scores.image[b], dist[nearest].mean(), rtol=1e-4)
        maps = []
        for tap in layers:
            train_l = train_pyr[tap] if tap else train_pyr
            test_l = pyramid[tap][b] if tap else pyramid[b]
            gallery = train_l[nearest].reshape(-1, train_l.shape[-1])
            patch = euclidean(test_l.reshape(-1, train_l.shape[-1]), gallery).min(axis=1)
            maps.append(torch_bilinear(patch.reshape(1, *test_l.shape[:2]), (64, 64))[0])
        np.testing.assert_allclose(scores.maps[b], np.mean(maps, axis=0), rtol=1e-3, atol=2e-3)


@pytest.fixture(scope="module")
def paper(train):
    """The paper's settings: K = 50 (capped at the 10 training images), float16, sigma 4."""
    method = SPADE()
    return method, method.fit(jax.random.PRNGKey(0), train)


def test_localises_defects_jitted_and_float16(paper, train):
    method, state = paper
    test = toy_test_set()
    assert state["pyramid"]["stage2"].dtype == np.float16
    scores = jax.jit(method.score)(state, test.images)
    assert roc_auc_score(test.masks.ravel(), np.asarray(scores.maps).ravel()) > 0.95
    assert np.asarray(scores.image)[4:].min() > np.asarray(scores.image)[:4].max()
    eager = method.score(state, test.images)
    chex.assert_trees_all_close(scores, eager, rtol=1e-4, atol=1e-3)


def test_overrides_and_errors(paper):
    method, state = paper
    assert make_method("spade", {"image_neighbours": "5"}).image_neighbours == 5
    coarse = SPADE(grid_stride=8)
    _, pyramid = coarse.describe(state["backbone"], np.zeros((1, 64, 64, 3), np.float32))
    assert {t: v.shape for t, v in pyramid.items()} == {
        "stage2": (1, 8, 8, 24), "stage3": (1, 8, 8, 40), "stage5": (1, 4, 4, 112)}
    with pytest.raises(ValueError, match="fit size"):
        method.score(state, np.zeros((1, 96, 96, 3), np.float32))
    with pytest.raises(ValueError, match="storage_dtype"):
        SPADE(storage_dtype="int8")
    with pytest.raises(ValueError, match="no training images"):
        SPADE().fit(jax.random.PRNGKey(0), [])
    mixed = batches_of(toy_images(2), 2) + batches_of(toy_images(2, size=32), 2)
    with pytest.raises(ValueError, match="must share one size: .*toy_good_0_0.png"):
        SPADE().fit(jax.random.PRNGKey(0), mixed)


def test_save_load_round_trip_keeps_float16_pyramid(paper, tmp_path):
    from anomjax.run_folder import load_run, save_run

    method, state = paper
    save_run(tmp_path / "run", method, state, {"image_size": 64})
    loaded_method, loaded_state, _ = load_run(tmp_path / "run")
    assert loaded_method == method
    assert loaded_state["pyramid"]["stage2"].dtype == np.float16
    images = toy_test_set().images[3:5]
    chex.assert_trees_all_equal(method.score(state, images),
                                loaded_method.score(loaded_state, images))
