"""Uninformed Students: patch-network receptive fields, dense evaluation equals patch-wise
evaluation, teacher pretraining, calibration, errors, and localisation after a short training
run on a tiny synthetic category."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_toy import assert_localises, train_and_score

from anomjax.data.synthetic import make_category
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
            teacher_batch=32, teacher_steps=100, learning_rate=3e-3)


def test_paper_defaults():
    method = make_method("uninformed_students")
    assert isinstance(method, UninformedStudents) and method.kind == "train"
    assert (method.patch_sizes, method.students, method.descriptor_dim) == ((17, 33, 65), 3, 128)
    assert (method.learning_rate, method.weight_decay) == (1e-4, 1e-5)
    assert [patch_extent(p) for p in (17, 33, 65)] == [17, 32, 60]
    assert (method.teacher_batch, method.teacher_steps) == (64, 2000)
    with pytest.raises(ValueError, match="teacher_steps"):
        UninformedStudents(teacher_steps=0)


@pytest.fixture(scope="module")
def two_scales():
    """An (untrained) two-scale model initialised from a list of image batches."""
    method = UninformedStudents(patch_sizes=(17, 33), students=2, width=4, descriptor_dim=4,
                                distill_tap="stage1", distill_size=16, teacher_batch=4,
                                teacher_steps=2)
    images = np.random.default_rng(0).uniform(size=(5, 40, 40, 3)).astype(np.float32)
    state = method.init(jax.random.PRNGKey(0), [images[:3], images[3:]])
    return method, state, images


def test_init_streams_batches_and_normalises_over_all_of_them(two_scales):
    """The init images come as a list of batches (never stacked); the teacher's descriptor
    statistics are those of all images' dense descriptors (NumPy over the stacked set)."""
    method, state, images = two_scales
    for p in method.patch_sizes:
        s = f"p{p}"
        desc = np.asarray(jax.jit(dense_descriptors, static_argnums=0)(
            method._net(p), state["frozen"]["teacher"][s], jnp.asarray(images)), np.float64)
        np.testing.assert_allclose(state["frozen"]["teacher_mean"][s], desc.mean((0, 1, 2)),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state["frozen"]["teacher_std"][s], desc.std((0, 1, 2)),
                                   rtol=1e-3, atol=1e-5)


def test_score_is_the_mean_over_scales_of_standardised_error_plus_variance(two_scales):
    """In NumPy from the teacher targets y and students' predictions mu_i:
    e = ||mean_i mu_i - y||^2, v = mean_i ||mu_i||^2 - ||mean_i mu_i||^2, each standardised
    by the stored statistics, summed, averaged over the scales; image score = max."""
    method, state, images = two_scales
    rng = np.random.default_rng(1)
    frozen = dict(state["frozen"])
    for stat in ("error_mean", "error_std", "variance_mean", "variance_std"):
        frozen[stat] = {s: jnp.float32(rng.uniform(0.5, 2.0)) for s in frozen[stat]}
    state = dict(state, frozen=frozen)
    x = jnp.asarray(images[:2])
    scores = jax.jit(method.score)(state, x)
    want = 0.0
    for p in method.patch_sizes:
        s = f"p{p}"
        target, preds = jax.jit(method._predictions, static_argnums=3)(
            state["params"], state, x, p)
        y, mu = np.asarray(target, np.float64), np.asarray(preds, np.float64)
        mean = mu.mean(0)
        e = ((mean - y) ** 2).sum(-1)
        v = (mu ** 2).sum(-1).mean(0) - (mean ** 2).sum(-1)
        f = {k: float(frozen[k][s]) for k in frozen if k.startswith(("error", "variance"))}
        want = want + ((e - f["error_mean"]) / f["error_std"]
                       + (v - f["variance_mean"]) / f["variance_std"])
    want = want / len(method.patch_sizes)
    np.testing.assert_allclose(scores.maps, want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(scores.image, want.max(axis=(1, 2)), rtol=1e-3, atol=1e-4)


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
    # calibrate ran after training: the statistics are those of the training images' raw
    # error and variance maps (NumPy over the training set)
    ds = make_category("metal", n_train=16, n_test_good=2, n_test_defect=4, image_size=48,
                       seed=0)  # the category train_and_score trained on
    train = np.concatenate([b.images for b in ds.train.batches(batch_size=16)])
    error, variance = jax.jit(method._raw_scores, static_argnums=2)(
        state, jnp.asarray(train), 17)
    e, v = np.asarray(error, np.float64), np.asarray(variance, np.float64)
    np.testing.assert_allclose(frozen["error_mean"]["p17"], e.mean(), rtol=1e-3)
    np.testing.assert_allclose(frozen["error_std"]["p17"], e.std(), rtol=1e-3)
    np.testing.assert_allclose(frozen["variance_mean"]["p17"], v.mean(), rtol=1e-3)
    np.testing.assert_allclose(frozen["variance_std"]["p17"], v.std(), rtol=1e-3)
