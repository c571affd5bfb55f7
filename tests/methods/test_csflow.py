"""CS-Flow: the authors' defaults, per-scale permutations, scoring from cached features, and a
trained model that scores synthetic defects above normal regions (parity with the authors'
code: tests/parity/test_parity_csflow.py)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.methods import make_method, method_config, method_from_config
from anomjax.methods.flows.csflow import MAP_MODES, CSFlow, parallel_permutation
from anomjax.nn.flows import pack
from tests.methods.trained_toy import assert_localises, train_and_score

TINY = CSFlow(tap="stage3", coupling_blocks=2, hidden=32, learning_rate=2e-3)
SIZE = 128  # the smallest scale sees 32 px; at 64 px (16 px) it no longer shows the defects


@pytest.fixture(scope="module")
def trained():
    return train_and_score(TINY, epochs=6, image_size=SIZE)


def test_authors_defaults_and_registry():
    m = CSFlow()
    assert (m.coupling_blocks, m.hidden, m.kernel_size, m.last_kernel_size, m.clamp) == (
        4, 1024, 3, 5, 3.0)
    assert (m.learning_rate, m.weight_decay, m.max_grad_norm) == (2e-4, 1e-5, 1.0)
    assert m.map_mode == "finest"
    assert [a.kernel_size for a, _ in m._subnets(192)] == [3, 3, 3, 5]
    assert make_method("csflow", {"tap": "stage3", "coupling_blocks": "2", "hidden": "32",
                                  "learning_rate": "0.002"}) == TINY
    assert method_from_config(method_config(TINY)) == TINY


def test_parallel_permutation_permutes_each_scales_channels():
    shapes = [(2, 2, 3), (1, 1, 3)]
    maps = [np.random.default_rng(i).normal(size=(1, *s)) for i, s in enumerate(shapes)]
    flat = np.asarray(pack([jnp.asarray(m) for m in maps]))
    rng = np.random.RandomState(5)
    p0, p1 = rng.permutation(3), rng.permutation(3)
    want = np.concatenate([maps[0][..., p0].reshape(1, -1), maps[1][..., p1].reshape(1, -1)], 1)
    np.testing.assert_allclose(flat[:, parallel_permutation(5, shapes)], want)


def test_scores_from_cached_features_equal_scores_from_images(trained):
    """The formulas are pinned against the authors' code in tests/parity; here: scoring from
    the engine's cached features is scoring from the images, in every map mode, and the maps
    have the input's size."""
    state, test, _ = trained
    images = jnp.asarray(test.images[:2])
    feats = TINY.frozen_features(state, images)
    assert [m.shape[1:3] for m in feats] == [(16, 16), (8, 8), (4, 4)]
    for mode in MAP_MODES:
        method = dataclasses.replace(TINY, map_mode=mode)
        plain, cached = method.score(state, images), method.score(state, images, feats)
        np.testing.assert_allclose(cached.maps, plain.maps, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cached.image, plain.image, rtol=1e-5)
        assert plain.maps.shape == (2, SIZE, SIZE)
    with pytest.raises(ValueError, match="multiples of 32"):
        TINY.score(state, jnp.zeros((1, 48, 48, 3)))
    with pytest.raises(ValueError, match="map_mode"):
        make_method("csflow", {"map_mode": "max"})


@pytest.mark.slow
def test_trained_csflow_scores_defects_above_normal_regions(trained):
    """12 steps on 16 images; measured pixel AUROC 0.60 (CS-Flow is foremost an image-level
    detector, and its maps come from stride-8 features of three image scales)."""
    _, test, scores = trained
    assert_localises(test, scores, SIZE, min_pixel_auroc=0.55)
