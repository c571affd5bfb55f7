"""MKD: cloner layout, value + direction loss, guided backpropagation, errors, and
localisation after a short training run on a tiny synthetic category."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_toy import assert_localises, train_and_score

from anomjax.methods import make_method
from anomjax.methods.distillation.mkd import MKD, Cloner, guided_relu, value_direction_loss


def test_paper_defaults():
    method = make_method("mkd")
    assert isinstance(method, MKD) and method.kind == "train"
    assert (method.learning_rate, method.cloner_width, method.sigma) == (1e-3, 16, 4.0)
    assert (len(method.taps), method.score_taps, method.localization) == (4, 3, "gbp")


def test_value_direction_loss_matches_numpy():
    rng = np.random.default_rng(0)
    pred = [rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 2, 2, 5))]
    real = [rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 2, 2, 5))]
    expected = np.zeros(2)
    for p, r in zip(pred, real, strict=True):
        p, r = p.reshape(2, -1), r.reshape(2, -1)
        cos = (p * r).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(r, axis=1))
        expected += ((p - r) ** 2).mean(1) + 0.7 * (1 - cos)
    got = value_direction_loss([jnp.asarray(x) for x in pred], [jnp.asarray(x) for x in real],
                               0.7)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_guided_relu_passes_only_positive_gradients_at_positive_inputs():
    x = jnp.array([-1.0, 2.0, 3.0])
    grad = jax.grad(lambda v: jnp.sum(guided_relu(v) * jnp.array([5.0, -4.0, 6.0])))(x)
    np.testing.assert_array_equal(grad, [0.0, 0.0, 6.0])
    np.testing.assert_array_equal(guided_relu(x), jax.nn.relu(x))


@pytest.mark.slow
def test_cloner_outputs_match_the_tapped_strides_and_channels():
    cloner = Cloner((4, 8, 32), (24, 40, 320))
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.jit(lambda k: cloner.init(k, x, train=False))(jax.random.PRNGKey(0))
    outs = jax.jit(lambda v: cloner.apply(v, x, train=False))(variables)
    assert [o.shape for o in outs] == [(1, 8, 8, 24), (1, 4, 4, 40), (1, 1, 1, 320)]
    assert variables["params"]["block1_conv1"]["kernel"].shape == (3, 3, 16, 16)
    assert variables["params"]["block3_conv2"]["kernel"].shape == (3, 3, 16, 40)


@pytest.mark.slow
def test_bad_configuration_raises_clear_errors():
    images = np.zeros((1, 64, 64, 3), np.float32)
    with pytest.raises(ValueError, match="powers of two"):
        MKD(taps=("stage4", "stage5")).init(jax.random.PRNGKey(0), images)
    with pytest.raises(ValueError, match="localization"):
        MKD(localization="cam").init(jax.random.PRNGKey(0), images)
    with pytest.raises(ValueError, match="multiples of 32"):
        MKD().init(jax.random.PRNGKey(0), np.zeros((1, 48, 48, 3), np.float32))


@pytest.fixture(scope="module")
def trained():
    method = MKD()
    state, test, scores = train_and_score(method, category="metal", epochs=16)
    return method, state, test, scores


@pytest.mark.slow
def test_trained_model_localises_defects_by_input_gradients(trained):
    method, state, test, scores = trained
    assert_localises(test, scores, 64, 0.85)


@pytest.mark.slow
def test_guided_backpropagation_differs_from_vanilla_gradients(trained):
    method, state, test, _ = trained
    images = jnp.asarray(test.images[-2:])
    gbp = jax.jit(method.attribution)(state, images)
    vanilla = jax.jit(MKD(localization="gradients").attribution)(state, images)
    assert gbp.shape == vanilla.shape == (2, 64, 64)
    assert np.all(np.asarray(gbp) >= 0) and np.all(np.asarray(vanilla) >= 0)
    assert not np.allclose(gbp, vanilla)
