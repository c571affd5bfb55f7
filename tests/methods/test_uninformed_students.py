"""Uninformed Students: patch-network receptive fields, dense evaluation equals patch-wise
evaluation, teacher pretraining, calibration, errors, and localisation after a short training
run on a tiny synthetic category."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_toy import assert_localises, train_and_score

from anomjax.methods import make_method
from anomjax.methods.distillation.uninformed_students import (
    DensePatchNet,
    UninformedStudents,
    compactness_loss,
    dense_descriptors,
    dilated_max_pool,
    patch_extent,
)

TINY = dict(patch_sizes=(17,), students=2, width=16, descriptor_dim=16, distill_size=32,
            teacher_patches=256, teacher_steps=100, learning_rate=3e-3)


def test_paper_defaults():
    method = make_method("uninformed_students")
    assert isinstance(method, UninformedStudents) and method.kind == "train"
    assert (method.patch_sizes, method.students, method.descriptor_dim) == ((17, 33, 65), 3, 128)
    assert (method.learning_rate, method.weight_decay) == (1e-4, 1e-5)
    assert [patch_extent(p) for p in (17, 33, 65)] == [17, 32, 60]


@pytest.mark.slow
@pytest.mark.parametrize("patch_size", [17, 33, 65])
def test_dense_output_equals_the_patch_network_at_every_pixel(patch_size):
    net = DensePatchNet(patch_size, width=4, dim=3)
    extent = patch_extent(patch_size)
    image = jax.random.uniform(jax.random.PRNGKey(0), (1, extent + 3, extent + 2, 3))
    params = net.init(jax.random.PRNGKey(1), image[:, :extent, :extent])["params"]
    apply = jax.jit(lambda x: net.apply({"params": params}, x))
    dense = apply(image)
    assert dense.shape == (1, 4, 3, 3)
    corners = [(0, 0), (3, 2), (1, 1)]
    patches = jnp.concatenate([image[:, y:y + extent, x:x + extent] for y, x in corners])
    patchwise = apply(patches)
    strided = DensePatchNet(patch_size, width=4, dim=3, patchwise=True).apply(
        {"params": params}, patches)
    assert patchwise.shape == strided.shape == (3, 1, 1, 3)
    for i, (y, x) in enumerate(corners):
        np.testing.assert_allclose(dense[0, y, x], patchwise[i, 0, 0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(strided[i, 0, 0], patchwise[i, 0, 0], rtol=1e-4, atol=1e-5)
    # changing a pixel outside the receptive field of output (0, 0) leaves it unchanged
    changed = apply(image.at[0, extent, extent - 1].set(5.0))
    np.testing.assert_allclose(changed[0, 0, 0], dense[0, 0, 0], rtol=1e-6)
    padded = jax.jit(dense_descriptors, static_argnums=0)(net, params, image)
    assert padded.shape == (1, extent + 3, extent + 2, 3)
    # every scale trains: the parameter gradient exists (dilated pools included) and is not 0
    grads = jax.jit(jax.grad(lambda p: jnp.sum(net.apply({"params": p}, image) ** 2)))(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_dilated_max_pool_equals_reduce_window(dilation):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 13, 11, 3))
    want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 1, 1, 1),
                                 "VALID", window_dilation=(1, dilation, dilation, 1))
    np.testing.assert_array_equal(dilated_max_pool(x, 2, dilation), want)


def test_compactness_loss_is_zero_for_uncorrelated_and_large_for_correlated_channels():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(64, 4))
    uncorrelated = np.linalg.qr(noise - noise.mean(axis=0))[0]  # zero-mean orthogonal columns
    assert float(compactness_loss(jnp.asarray(uncorrelated))) < 1e-3
    x = rng.normal(size=(64, 1))
    correlated = jnp.asarray(np.concatenate([x, 2 * x, -x], axis=1))
    np.testing.assert_allclose(compactness_loss(correlated), 6.0, rtol=1e-4)


def test_bad_configuration_raises_clear_errors():
    images = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="patch_sizes"):
        UninformedStudents(patch_sizes=(21,)).init(jax.random.PRNGKey(0), images)
    with pytest.raises(ValueError, match="students >= 1"):
        UninformedStudents(students=0).init(jax.random.PRNGKey(0), images)


@pytest.mark.slow
def test_images_smaller_than_the_patch_are_rejected():
    with pytest.raises(ValueError, match="at least 60x60"):
        UninformedStudents(**{**TINY, "patch_sizes": (65,)}).init(
            jax.random.PRNGKey(0), np.zeros((1, 48, 48, 3), np.float32))


@pytest.fixture(scope="module")
def trained():
    method = UninformedStudents(**TINY)
    state, test, scores = train_and_score(method, category="metal", epochs=8, image_size=48,
                                          batch_size=4)
    return method, state, test, scores


@pytest.mark.slow
def test_trained_students_score_defects_above_normal_pixels(trained):
    method, state, test, scores = trained
    assert_localises(test, scores, 48, 0.75)


@pytest.mark.slow
def test_state_layout_and_calibration(trained):
    method, state, test, _ = trained
    frozen = state["frozen"]
    assert jax.tree.leaves(state["params"]["p17"])[0].shape[0] == 2  # two stacked students
    assert frozen["teacher_mean"]["p17"].shape == (16,)
    assert np.all(np.asarray(frozen["teacher_std"]["p17"]) > 0)
    # calibrate ran after training: the statistics moved from their identity initial values
    error, variance = jax.jit(method._raw_scores, static_argnums=2)(
        state, jnp.asarray(test.images[:2]), 17)
    assert error.shape == variance.shape == (2, 48, 48) and float(variance.min()) >= -1e-4
    assert float(frozen["error_std"]["p17"]) > 0 and float(frozen["variance_std"]["p17"]) > 0
    assert float(frozen["error_mean"]["p17"]) != 0.0
