"""Reverse Distillation: paper defaults, loss definition, errors, and localisation after a
short training run on a tiny synthetic category."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_toy import defect_contrast, pixel_auroc, train_and_score

from anomjax.methods import make_method
from anomjax.methods.distillation.reverse_distillation import (
    ReverseDistillation,
    cosine_distance_map,
    flattened_cosine_distance,
)


def test_paper_defaults():
    method = make_method("reverse_distillation")
    assert isinstance(method, ReverseDistillation) and method.kind == "train"
    assert (method.learning_rate, method.beta1, method.beta2, method.sigma) == (
        0.005, 0.5, 0.999, 4.0)
    assert method.taps == ("stage2", "stage3", "stage4")
    assert (method.default_epochs, method.default_batch_size, method.default_image_size) == (
        200, 16, 256)
    assert method.loss_cosine == "flattened"  # the official code's (the paper: per position)
    # Lite0's taps are signed: no final ReLU in the decoder; ResNet taps are post-ReLU.
    assert method.final_relu is False
    assert ReverseDistillation(backbone="resnet18", taps=("layer1", "layer2", "layer3"),
                               ).final_relu is True
    with pytest.raises(ValueError, match="loss_cosine"):
        ReverseDistillation(loss_cosine="l2")
    with pytest.raises(ValueError, match="blocks"):
        ReverseDistillation(blocks=0)


def test_cosine_distance_map_matches_numpy():
    a, b = np.random.default_rng(0).normal(size=(2, 2, 3, 4, 5)).astype(np.float32)
    expected = 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(cosine_distance_map(jnp.asarray(a), jnp.asarray(b)), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cosine_distance_map(jnp.asarray(a), jnp.asarray(3 * a)), 0,
                               atol=1e-6)


def test_flattened_cosine_distance_is_one_cosine_per_image():
    a, b = np.random.default_rng(1).normal(size=(2, 3, 4, 2, 5)).astype(np.float32)
    fa, fb = a.reshape(3, -1), b.reshape(3, -1)
    expected = 1 - (fa * fb).sum(-1) / (np.linalg.norm(fa, axis=-1) * np.linalg.norm(fb, axis=-1))
    got = flattened_cosine_distance(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, np.asarray(cosine_distance_map(jnp.asarray(a),
                                                               jnp.asarray(b))).mean((1, 2)))


@pytest.fixture(scope="module")
def fitted_to_two_images():
    """60 Adam steps of the default model (Lite0 teacher) on two 32 px images."""
    import optax

    method = ReverseDistillation()
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(2, 32, 32, 3)), jnp.float32)
    state = method.init(jax.random.PRNGKey(0), images)
    opt = method.optimizer(60)

    @jax.jit
    def step(params, opt_state, batch_stats):
        st = dict(state, params=params, batch_stats=batch_stats)
        (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
            params, st, images, jax.random.PRNGKey(0))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux["batch_stats"], loss

    params, opt_state, stats = state["params"], opt.init(state["params"]), state["batch_stats"]
    for _ in range(60):
        params, opt_state, stats, loss = step(params, opt_state, stats)
    state = dict(state, params=params, batch_stats=stats)
    return method, state, images, float(loss)


def test_decoder_fits_the_signed_teacher_features(fitted_to_two_images):
    """The loss falls far below the floor any non-negative decoder output has (the old final
    ReLU), and D is negative where E is."""
    method, state, images, loss = fitted_to_two_images
    feats, recon, _ = jax.jit(method._reconstruct, static_argnums=3)(
        state["params"], state, images, True)
    floor = 0.0
    for e in feats:
        e = np.asarray(e, np.float64).reshape(2, -1)
        # best cosine of a non-negative vector with e: ||relu(e)|| / ||e||
        floor += np.mean(1 - np.linalg.norm(np.maximum(e, 0), axis=1)
                         / np.linalg.norm(e, axis=1))
    assert floor > 0.5  # Lite0 taps are signed
    assert loss < 0.3 * floor, (loss, floor)
    for e, d in zip(feats, recon, strict=True):
        e, d = np.asarray(e), np.asarray(d)
        strong = np.abs(e) > np.quantile(np.abs(e), 0.5)
        assert np.mean(np.sign(d[strong]) == np.sign(e[strong])) > 0.8
        assert np.any(d[e < 0] < 0)


def test_loss_is_the_official_flattened_cosine_in_numpy(fitted_to_two_images):
    method, state, images, _ = fitted_to_two_images
    feats, recon, _ = jax.jit(method._reconstruct, static_argnums=3)(
        state["params"], state, images, True)
    loss, aux = jax.jit(method.loss)(state["params"], state, images, jax.random.PRNGKey(0))
    want = []
    for e, d in zip(feats, recon, strict=True):
        e, d = np.asarray(e, np.float64).reshape(2, -1), np.asarray(d, np.float64).reshape(2, -1)
        cos = (e * d).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(d, axis=1))
        want.append(np.mean(1 - cos))
    for tap, w in zip(method.taps, want, strict=True):
        assert float(aux[f"cos_{tap}"]) == pytest.approx(w, rel=1e-4, abs=1e-6)
    assert float(loss) == pytest.approx(sum(want), rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_bad_configuration_raises_clear_errors():
    images = np.zeros((1, 64, 64, 3), np.float32)
    with pytest.raises(ValueError, match="must double"):
        ReverseDistillation(taps=("stage2", "stage4", "stage5")).init(jax.random.PRNGKey(0),
                                                                     images)
    with pytest.raises(ValueError, match=r"reverse_distillation: .*no tap\(s\) \['layer9'\]"):
        ReverseDistillation(taps=("stage2", "stage3", "layer9")).init(jax.random.PRNGKey(0),
                                                                     images)
    with pytest.raises(ValueError, match="multiples of 32"):
        ReverseDistillation().init(jax.random.PRNGKey(0), np.zeros((1, 48, 48, 3), np.float32))


@pytest.fixture(scope="module")
def trained():
    """16 epochs on the wood toy with the paper's per-position loss. Measured pixel AUROC:
    0.967 with it, 0.831 with the official flattened loss (the default), both without the
    decoder's final ReLU."""
    method = ReverseDistillation(loss_cosine="per_position")
    state, test, scores = train_and_score(method, category="wood", epochs=16)
    return method, state, test, scores


@pytest.mark.slow
def test_trained_model_scores_defects_above_normal_pixels(trained):
    method, state, test, scores = trained
    chex.assert_shape([scores.maps], [(len(test), 64, 64)])
    on_defect, off_defect = defect_contrast(test, scores)
    assert on_defect > off_defect
    assert pixel_auroc(test, scores) > 0.85
    np.testing.assert_allclose(scores.image, np.asarray(scores.maps).max(axis=(1, 2)),
                               rtol=1e-6)


@pytest.mark.slow
def test_per_position_loss_and_images_score_independently(trained):
    """The paper's loss in NumPy: per scale, the mean over images and positions of 1 - cos
    over channels; it differs from the official flattened form on the same state."""
    method, state, test, scores = trained
    images = jnp.asarray(test.images[:2])
    loss, aux = jax.jit(method.loss)(state["params"], state, images, jax.random.PRNGKey(0))
    np.testing.assert_allclose(loss, sum(aux[f"cos_{t}"] for t in method.taps), rtol=1e-6)
    feats, recon, _ = jax.jit(method._reconstruct, static_argnums=3)(
        state["params"], state, images, True)
    for tap, e, d in zip(method.taps, feats, recon, strict=True):
        e, d = np.asarray(e, np.float64), np.asarray(d, np.float64)
        cos = (e * d).sum(-1) / (np.linalg.norm(e, axis=-1) * np.linalg.norm(d, axis=-1))
        assert float(aux[f"cos_{tap}"]) == pytest.approx(np.mean(1 - cos), rel=1e-4)
    flattened, _ = jax.jit(ReverseDistillation().loss)(state["params"], state, images,
                                                      jax.random.PRNGKey(0))
    assert float(flattened) != pytest.approx(float(loss), rel=0.05)
    single = jax.jit(method.score)(state, images[1:2])
    np.testing.assert_allclose(single.maps[0], scores.maps[1], rtol=1e-4, atol=1e-5)
