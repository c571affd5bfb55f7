"""DFR: regional features, PCA latent size, autoencoder shapes, errors, and localisation after
a short training run on a tiny synthetic category."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_toy import assert_localises, train_and_score

from anomjax.methods import make_method
from anomjax.methods.reconstruction.dfr import (
    DFR,
    first_images,
    pca_dimension,
    regional_features,
)


def test_paper_defaults():
    method = make_method("dfr")
    assert isinstance(method, DFR) and method.kind == "train"
    assert (method.pool_size, method.pool_stride, method.variance_kept) == (4, 4, 0.9)
    assert (method.learning_rate, method.latent_dim, method.sigma) == (1e-4, 0, 0.0)
    assert (method.upsample, method.default_epochs) == ("bilinear", 150)
    assert (method.default_batch_size, method.default_image_size, method.pca_images) == (
        4, 256, 10)
    assert method.init_on_all_images
    with pytest.raises(ValueError, match="upsample"):
        DFR(upsample="bicubic")
    with pytest.raises(ValueError, match="variance_kept"):
        DFR(variance_kept=1.5)


def test_first_images_reads_batches_only_as_far_as_needed():
    def batches():
        yield np.zeros((4, 8, 8, 3)) + 1
        yield np.zeros((4, 8, 8, 3)) + 2
        yield np.zeros((4, 8, 8, 3)) + 3
        raise AssertionError("read past the images needed")

    got = first_images(batches(), 6)
    assert got.shape == (6, 8, 8, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0, 0, 0], [1, 1, 1, 1, 2, 2])
    assert first_images(np.ones((3, 8, 8, 3)), 10).shape == (3, 8, 8, 3)


def test_regional_features_average_nearest_upsampled_maps():
    rng = np.random.default_rng(0)
    fine = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)  # stride 2 of a 16 px image
    coarse = rng.normal(size=(1, 2, 2, 3)).astype(np.float32)  # stride 8
    out = np.asarray(regional_features([jnp.asarray(fine), jnp.asarray(coarse)], (16, 16), 4, 4,
                                       "nearest"))
    assert out.shape == (1, 4, 4, 5)
    # a 4x4 window on the image grid covers 2x2 cells of the stride-2 map ...
    np.testing.assert_allclose(out[0, 1, 2, :2], fine[0, 2:4, 4:6].mean(axis=(0, 1)),
                               rtol=1e-6)
    # ... and lies inside one cell of the stride-8 map
    np.testing.assert_allclose(out[0, 1, 2, 2:], coarse[0, 0, 1], rtol=1e-6)
    overlapping = regional_features([jnp.asarray(fine)], (16, 16), 4, 2)
    assert overlapping.shape == (1, 8, 8, 2)  # replicate padding of (4 - 2) // 2 per side
    constant = regional_features([jnp.ones((1, 2, 2, 3))], (16, 16), 4, 4)  # bilinear
    np.testing.assert_allclose(constant, 1.0, rtol=1e-6)


def test_pca_dimension_counts_components_for_the_variance_share():
    rng = np.random.default_rng(1)
    scales = np.array([10.0, 5.0, 1.0, 0.1, 0.1])
    x = jnp.asarray(rng.normal(size=(4000, 5)) * scales)
    # variances 100, 25, 1, 0.01, 0.01: cumulative shares 79.4 %, 99.2 %, 99.98 %, ...
    assert pca_dimension(x, 0.5) == 1
    assert pca_dimension(x, 0.9) == 2
    assert pca_dimension(x, 0.995) == 3


@pytest.mark.slow
def test_bad_configuration_raises_clear_errors():
    images = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="pool_size >= pool_stride"):
        DFR(pool_size=2, pool_stride=4).init(jax.random.PRNGKey(0), images)
    with pytest.raises(ValueError, match=r"dfr: .*no tap\(s\) \['layer2'\]"):
        DFR(taps=("stage1", "layer2")).init(jax.random.PRNGKey(0), images)


@pytest.fixture(scope="module")
def trained():
    # The paper's lr 1e-4 needs hundreds of epochs; a larger one keeps the test short.
    method = DFR(learning_rate=5e-3)
    state, test, scores = train_and_score(method, category="metal", epochs=16)
    return method, state, test, scores


@pytest.mark.slow
def test_trained_model_scores_defects_above_normal_pixels(trained):
    method, state, test, scores = trained
    assert_localises(test, scores, 64, 0.85)


@pytest.mark.slow
def test_autoencoder_shape_follows_pca_and_loss_is_the_mean_of_its_map(trained):
    method, state, test, scores = trained
    params = state["params"]
    channels = params["conv0"]["kernel"].shape[2]
    latent = params["conv2"]["kernel"].shape[-1]
    assert channels == 16 + 24 + 40 + 80  # Lite0 stage1..stage4
    assert params["conv0"]["kernel"].shape[-1] == (channels + 2 * latent) // 2
    assert params["conv5"]["kernel"].shape[-1] == channels and 1 <= latent < channels
    images = jnp.asarray(test.images[:2])
    reconstruct = jax.jit(method._reconstruct, static_argnums=3)
    # training loss = mean over images, positions and channels of the squared error (NumPy)
    feats, recon, _ = reconstruct(params, state, images, True)
    f, r = np.asarray(feats, np.float64), np.asarray(recon, np.float64)
    loss, _ = jax.jit(method.loss)(params, state, images, jax.random.PRNGKey(0))
    assert f.shape == (2, 16, 16, channels)
    assert float(loss) == pytest.approx(np.mean((r - f) ** 2), rel=1e-4)
    # the score map (sigma 0) is the channel-mean squared error in eval mode (NumPy),
    # upsampled bilinearly with the corners aligned (the authors'; tests/parity/test_parity_dfr)
    from anomjax.methods.reconstruction.dfr import resize

    feats, recon, _ = reconstruct(params, state, images, False)
    errors = np.mean((np.asarray(recon, np.float64) - np.asarray(feats, np.float64)) ** 2, -1)
    maps = np.asarray(scores.maps)[:2]
    upsampled = resize(jnp.asarray(errors, jnp.float32)[..., None], (64, 64), "bilinear",
                       method.align_corners)[..., 0]
    np.testing.assert_allclose(maps, upsampled, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(scores.image[:2], maps.max(axis=(1, 2)), rtol=1e-6)
