"""DifferNet: the authors' defaults, rotations, scoring in chunks, and a trained model that
scores synthetic defects above normal regions (parity with the authors' code:
tests/parity/test_parity_differnet.py)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.methods import make_method, method_config, method_from_config
from anomjax.methods.flows.common import rotate
from anomjax.methods.flows.differnet import DifferNet
from tests.methods.trained_toy import assert_localises, train_and_score

# sigma_side=0: the toy keeps the authors' 3 px gradient blur (scaled from their 448 px to
# 64 px it would be 0.43 px, which leaves the toy's gradient maps too noisy to localise)
TINY = DifferNet(taps=("stage5",), coupling_blocks=4, fc_internal=64, n_transforms=2,
                 n_transforms_test=4, sigma_side=0)


@pytest.fixture(scope="module")
def trained():
    return train_and_score(TINY, epochs=4)


def test_authors_defaults_and_registry():
    m = DifferNet()
    assert (m.n_scales, m.coupling_blocks, m.fc_internal, m.fc_layers, m.clamp) == (
        3, 8, 2048, 3, 3.0)
    assert (m.n_transforms, m.n_transforms_test, m.learning_rate) == (4, 64, 2e-4)
    assert (DifferNet.default_batch_size, m.score_chunk) == (24, 1)
    assert make_method("differnet", {"taps": "stage5", "coupling_blocks": "4",
                                     "fc_internal": "64", "n_transforms": "2",
                                     "n_transforms_test": "4", "sigma_side": "0"}) == TINY
    assert method_from_config(method_config(TINY)) == TINY


def test_rotation_by_quarter_turns_is_numpys_rot90_and_zero_outside():
    img = np.random.default_rng(0).uniform(size=(1, 6, 6, 3)).astype(np.float32)
    for k in (1, 2, 3):
        got = rotate(jnp.asarray(img), jnp.asarray([90.0 * k]))
        np.testing.assert_allclose(got[0], np.rot90(img[0], k), atol=1e-6)
    got = np.asarray(rotate(jnp.ones((1, 9, 9, 1)), jnp.asarray([45.0])))
    assert got[0, 0, 0, 0] == 0 and got[0, 4, 4, 0] == 1  # corners leave the image


def test_scoring_in_chunks_of_two_equals_scoring_one_image_per_step(trained):
    """The formulas are pinned against the authors' code in tests/parity (where two images
    in one program equal them too); here: three images scored two per step (the last step
    padded) equal the fixture's scores, one image per step (the default)."""
    state, test, scores = trained
    assert TINY.score_chunk == 1
    chunked = dataclasses.replace(TINY, score_chunk=2).score(state, jnp.asarray(test.images[:3]))
    np.testing.assert_allclose(chunked.image, scores.image[:3], rtol=1e-5)
    np.testing.assert_allclose(chunked.maps, scores.maps[:3], rtol=1e-4,
                               atol=1e-6 * float(np.max(scores.maps[:3])))
    assert scores.maps.shape == (len(test), 64, 64)


def test_odd_image_size_is_a_clear_error(trained):
    state, _, _ = trained
    with pytest.raises(ValueError, match="multiples of 4"):
        TINY.score(state, jnp.zeros((1, 30, 30, 3)))


@pytest.mark.slow
def test_trained_differnet_scores_defects_above_normal_regions(trained):
    _, test, scores = trained
    assert_localises(test, scores, 64, min_pixel_auroc=0.6)
