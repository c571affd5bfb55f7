"""RIAD, CutPaste, DRAEM (+ SSPCAB): losses and helpers against independent formulas, the
anomalies made inside the jitted step, and bad input."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from anomjax.methods import make_method, method_config, method_from_config
from anomjax.methods.self_supervised.common import mean_filter
from anomjax.methods.self_supervised.cutpaste import CutPaste, dense_patches, three_way
from anomjax.methods.self_supervised.draem import DRAEM, focal_loss
from anomjax.methods.self_supervised.gaussian_density import distance, fit_gaussian, ledoit_wolf
from anomjax.methods.self_supervised.riad import RIAD
from anomjax.methods.self_supervised.unet import upsample2x

TINY_DRAEM = DRAEM(rec_width=4, seg_width=4)
TINY_RIAD = RIAD(width=4, depth=2, cell_sizes=(2, 8))
TINY_CUTPASTE = CutPaste(tap="stage2", head_widths=(8,), patch_size=32, patch_stride=16)


def test_focal_loss_is_drаem_s_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 2))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    target = rng.integers(0, 2, size=(3, 5))
    one_hot = np.clip(np.eye(2)[target], 1e-5, 1 - 1e-5)
    pt = (one_hot * probs).sum(-1) + 1e-5
    want = np.mean(-(1 - pt) ** 2 * np.log(pt))
    np.testing.assert_allclose(focal_loss(jnp.asarray(probs), jnp.asarray(target)), want,
                               rtol=1e-5)


def test_mean_filter_and_align_corners_upsampling_match_scipy():
    maps = np.random.default_rng(1).uniform(size=(2, 12, 9)).astype(np.float32)
    want = np.stack([ndimage.uniform_filter(m.astype(np.float64), 5, mode="constant")
                     for m in maps])
    np.testing.assert_allclose(mean_filter(jnp.asarray(maps), 5), want, rtol=1e-5, atol=1e-7)
    x = np.random.default_rng(2).uniform(size=(1, 5, 7, 2)).astype(np.float32)
    # scipy's order-1 zoom with grid_mode=False maps corner to corner, like align_corners.
    want = ndimage.zoom(x.astype(np.float64), (1, 2, 2, 1), order=1, grid_mode=False)
    np.testing.assert_allclose(upsample2x(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)


def test_ledoit_wolf_density_matches_scikit_learn():
    from sklearn.covariance import LedoitWolf

    x = np.random.default_rng(3).normal(size=(40, 6)) @ np.diag([3, 1, 1, 0.5, 0.2, 0.1])
    mean, cov, shrink = ledoit_wolf(jnp.asarray(x, jnp.float32))
    ref = LedoitWolf().fit(x)
    np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(shrink, ref.shrinkage_, rtol=1e-4)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-6)
    g = fit_gaussian(jnp.asarray(x, jnp.float32))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    fitted = LedoitWolf().fit(unit)
    q = np.random.default_rng(4).normal(size=(5, 6))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True) - fitted.location_
    want = np.sqrt(np.einsum("ni,ij,nj->n", qn, np.linalg.inv(fitted.covariance_), qn))
    np.testing.assert_allclose(distance(g, jnp.asarray(q, jnp.float32)), want, rtol=2e-3)
    grid = jnp.asarray(q[:4].reshape(2, 2, 6), jnp.float32)  # [B, h, w, D], as the patch level
    np.testing.assert_allclose(distance(g, grid), want[:4].reshape(2, 2), rtol=2e-3)


def test_dense_patches_are_the_strided_crops():
    image = jnp.arange(10 * 12 * 1, dtype=jnp.float32).reshape(10, 12, 1)
    patches = dense_patches(image, 4, 3)
    assert patches.shape == (3, 3, 4, 4, 1)
    np.testing.assert_array_equal(patches[1, 2], image[3:7, 6:10])


def test_three_way_batches_normal_cutpaste_and_scar():
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    x, labels = jax.jit(three_way, static_argnums=2)(jax.random.key(1), images, 256.0)
    assert x.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    changed = np.abs(np.asarray(x[2:]) - np.asarray(x[:2].repeat(1, 0)[np.r_[0, 1, 0, 1]]))
    assert np.all(changed.reshape(4, -1).max(1) > 0.01)  # every augmented copy differs


def test_riad_training_masks_and_reconstruction_combination():
    masks = TINY_RIAD.training_masks(jax.random.key(0), 3, (16, 16))
    assert masks.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(masks.sum(1), 1.0)  # complementary: every pixel once
    images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3))
    # With the identity as "inpainter" every pixel is reconstructed from an input in which it
    # is hidden, i.e. zero: the combination only ever uses hidden pixels.
    rec, _ = RIAD.combine(images, masks, lambda x: (x, None))
    np.testing.assert_array_equal(rec, 0.0)
    rec, _ = RIAD.combine(images, masks, lambda x: (jnp.ones_like(x), None))
    np.testing.assert_array_equal(rec, 1.0)


def _has_callback(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if "callback" in eqn.primitive.name:
            return True
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            if _has_callback(sub):
                return True
    return False


@pytest.mark.parametrize("method", [TINY_RIAD, TINY_CUTPASTE], ids=lambda m: m.name)
def test_anomalies_are_made_inside_the_jitted_step(method):
    """The loss, as the engine jits it, contains the random-number generation that makes the
    anomalies (threefry on the step's key) and no host callback."""
    assert_generation_in_step(method)


def assert_generation_in_step(method) -> None:
    """Shapes only (no compilation): trace ``init``, then the loss, and inspect its jaxpr."""
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    state = jax.eval_shape(method.init, jax.random.key(1), images)
    closed = jax.make_jaxpr(method.loss)(state["params"], state, images, jax.random.key(2))
    assert not _has_callback(closed.jaxpr)
    text = str(closed.jaxpr)
    assert "threefry2x32" in text or "random_bits" in text


def test_draem_loss_is_the_batch_loss_of_the_anomalies_its_key_draws():
    """Inside the jitted loss each key draws its own anomaly batch from the step's sources:
    masks that differ between keys, augmented images equal to the targets outside the masks
    and different inside, and the loss is exactly :meth:`DRAEM.batch_loss` of that batch;
    uint8 sources are the float ones times 255. (The networks, the loss and the step are
    pinned to the authors' code in ``tests/parity/test_parity_draem.py``.)"""
    images = jax.random.uniform(jax.random.key(0), (4, 64, 64, 3))
    state = TINY_DRAEM.init(jax.random.key(1), images)
    assert "frozen" not in state  # the textures stay on the host
    sources = TINY_DRAEM.host_inputs((64, 64)).draw(np.random.default_rng(0), 4)["sources"]
    assert sources.shape == (4, 64, 64, 3) and sources.dtype == np.uint8
    draw = jax.jit(TINY_DRAEM.anomaly_batch)
    batches = [draw(images, jax.random.key(k), sources) for k in range(3)]
    as_floats = draw(images, jax.random.key(2), sources.astype(np.float32) / 255)
    for got, want in zip(as_floats, batches[2], strict=True):  # another compiled program
        np.testing.assert_allclose(got, want, atol=1e-5)
    masks = np.stack([np.asarray(b[2]) for b in batches])
    assert masks.sum() > 0 and not np.array_equal(masks[0], masks[1])
    for targets, augmented, mask in batches:
        outside = np.broadcast_to(np.asarray(mask)[..., None] == 0, augmented.shape)
        np.testing.assert_array_equal(np.asarray(augmented)[outside], np.asarray(targets)[outside])
        assert mask.sum() == 0 or np.abs(augmented - targets).max() > 0.01
    loss, _ = jax.jit(TINY_DRAEM.loss)(state["params"], state, images, jax.random.key(2),
                                       host={"sources": sources})
    want, _ = jax.jit(TINY_DRAEM.batch_loss)(state["params"], state, *batches[2])
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_draem_sspcab_configuration_and_registry():
    """Configuration only: the SSPCAB block's placement, loss wiring and full-width parameter
    tree are pinned to the reference in ``tests/parity/test_parity_sspcab.py`` and
    ``test_parity_draem.py``."""
    sspcab = make_method("draem", {"sspcab": "true", "rec_width": "4", "seg_width": "4"})
    assert sspcab.sspcab and sspcab.sspcab_lambda == 0.1
    assert method_from_config(method_config(sspcab)) == sspcab
    with pytest.raises(ValueError, match="multiples of 32"):
        TINY_DRAEM.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
    with pytest.raises(ValueError, match="divide uint8"):
        TINY_DRAEM.score({}, jnp.zeros((1, 64, 64, 3), jnp.uint8))
    with pytest.raises(ValueError, match="p_anomaly"):
        DRAEM(p_anomaly=1.5)
    from anomjax.data.errors import DataError
    with pytest.raises(DataError, match="texture folder"):
        DRAEM(rec_width=4, seg_width=4, texture_dir="/nonexistent").host_inputs((64, 64))


def test_draem_adam_rate_drops_by_five_at_80_and_90_percent():
    """With a constant gradient Adam's step is the learning rate itself."""
    for total, want in ((10, [1e-4] * 8 + [2e-5, 4e-6]), (4, [1e-4] * 3 + [4e-6])):
        opt = TINY_DRAEM.optimizer(total)
        params = {"w": jnp.zeros(())}
        state = opt.init(params)
        steps = []
        for _ in range(total):
            updates, state = opt.update({"w": jnp.ones(())}, state, params)
            steps.append(-float(updates["w"]))
        np.testing.assert_allclose(steps, want, rtol=1e-4)
