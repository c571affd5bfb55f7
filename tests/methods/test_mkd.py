"""MKD: cloner layout, value + direction loss, guided backpropagation, errors, and
localisation after a short training run on a tiny synthetic category."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_toy import assert_localises, train_and_score

from anomjax.methods import make_method
from anomjax.methods.distillation.mkd import (
    MKD,
    Cloner,
    guided_relu,
    smooth_grad_std,
    value_direction_loss,
)


def test_paper_defaults():
    method = make_method("mkd")
    assert isinstance(method, MKD) and method.kind == "train"
    assert (method.learning_rate, method.cloner_width, method.sigma) == (1e-3, 16, 4.0)
    assert (len(method.taps), method.score_taps, method.localization) == (4, 3, "gbp")
    assert (method.default_epochs, method.default_batch_size, method.default_image_size) == (
        601, 128, 128)
    assert (method.smooth_grad_samples, method.smooth_grad_noise) == (50, 0.05)
    with pytest.raises(ValueError, match="localization"):
        MKD(localization="cam")


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


def test_guided_backpropagation_of_a_two_layer_net_matches_the_hand_derived_gradient():
    """f(x) = w2 . relu(W1 x): vanilla df/dx = W1^T (1[h > 0] w2); guided backpropagation
    also drops the negative gradients arriving at the ReLU: W1^T (1[h > 0] 1[w2 > 0] w2)."""
    rng = np.random.default_rng(0)
    w1, w2, x = rng.normal(size=(6, 4)), rng.normal(size=6), rng.normal(size=4)
    h = w1 @ x
    assert np.any((h > 0) & (w2 < 0)) and np.any((h > 0) & (w2 > 0))  # both cases occur
    vanilla = w1.T @ ((h > 0) * w2)
    guided = w1.T @ ((h > 0) * (w2 > 0) * w2)
    w1j, w2j = jnp.asarray(w1), jnp.asarray(w2)
    got = jax.grad(lambda v: w2j @ guided_relu(w1j @ v))(jnp.asarray(x))
    np.testing.assert_allclose(got, guided, rtol=1e-6)
    got_vanilla = jax.grad(lambda v: w2j @ jax.nn.relu(w1j @ v))(jnp.asarray(x))
    np.testing.assert_allclose(got_vanilla, vanilla, rtol=1e-6)
    assert not np.allclose(guided, vanilla)


def test_smooth_grad_noise_is_the_authors():
    """``sigma = 0.05 / (max - min)``, noise ``normal_(0, sigma ** 2)``: std (0.05/range)^2."""
    images = jnp.stack([jnp.linspace(0.0, 1.0, 12).reshape(2, 2, 3),
                        jnp.linspace(0.2, 0.7, 12).reshape(2, 2, 3)])
    np.testing.assert_allclose(smooth_grad_std(images, 0.05).ravel(),
                               [(0.05 / 1.0) ** 2, (0.05 / 0.5) ** 2], rtol=1e-5)


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
def test_image_score_is_the_loss_on_the_three_deepest_taps(trained):
    """In NumPy: sum over the 3 deepest taps of mean squared error + 2 (1 - cos) per image."""
    from anomjax.nn.teacher import frozen_features, teacher

    method, state, test, scores = trained
    images = jnp.asarray(test.images)
    backbone = teacher(method.backbone)
    real = jax.jit(lambda x: frozen_features(backbone, state["frozen"]["teacher"], x,
                                             method.taps))(images)
    cloner = method._cloner(backbone)
    pred = jax.jit(lambda x: cloner.apply({"params": state["params"],
                                           "batch_stats": state["batch_stats"]}, x,
                                          train=False))(images)
    want = np.zeros(len(images))
    for p, r in zip(pred[1:], real[1:], strict=True):
        p = np.asarray(p, np.float64).reshape(len(images), -1)
        r = np.asarray(r, np.float64).reshape(len(images), -1)
        cos = (p * r).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(r, axis=1))
        want += ((p - r) ** 2).mean(1) + 2.0 * (1 - cos)
    np.testing.assert_allclose(scores.image, want, rtol=1e-4)


@pytest.mark.slow
def test_attributions_guided_vanilla_and_smooth_grad(trained):
    """GBP differs from the vanilla gradient; SmoothGrad is the mean of the vanilla
    attributions of noisy copies (the authors' noise, drawn with the same keys)."""
    method, state, test, _ = trained
    images = jnp.asarray(test.images[-2:])
    vanilla_fn = jax.jit(MKD(localization="gradients").attribution)
    gbp = jax.jit(method.attribution)(state, images)
    vanilla = vanilla_fn(state, images)
    assert gbp.shape == vanilla.shape == (2, 64, 64)
    assert not np.allclose(gbp, vanilla, rtol=0.05)
    smooth = MKD(localization="smooth_grad", smooth_grad_samples=3)
    key = jax.random.PRNGKey(7)
    got = jax.jit(smooth.attribution)(state, images, key)
    std = np.asarray(smooth_grad_std(images, 0.05))
    noisy = [images + jax.random.normal(k, images.shape) * std
             for k in jax.random.split(key, 3)]
    want = np.mean([np.asarray(vanilla_fn(state, x)) for x in noisy], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)
    assert not np.allclose(got, vanilla, rtol=1e-3)
    maps = jax.jit(smooth.score)(state, images).maps
    assert maps.shape == (2, 64, 64) and np.all(np.isfinite(maps))
