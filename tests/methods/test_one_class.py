"""Patch SVDD, Deep SVDD, FCDD: their pieces against independent formulas, pair sampling,
outlier exposure inside the jitted step, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_self_supervised import assert_generation_in_step

from anomjax.methods.one_class.deep_svdd import DeepSVDD, fix_centre
from anomjax.methods.one_class.fcdd import FCDD, hsc_loss, hsc_pixel_loss, pseudo_huber
from anomjax.methods.one_class.patch_svdd import PatchSVDD, position_pair, svdd_pair

TINY_FCDD = FCDD(head_widths=(8,))


def test_hypersphere_classifier_losses_are_the_code_s_formulas():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(4, 3, 5))
    a = np.sqrt(out ** 2 + 1) - 1
    np.testing.assert_allclose(pseudo_huber(jnp.asarray(out)), a, rtol=1e-6)
    labels = np.array([0, 1, 0, 1])
    per = a.reshape(4, -1).mean(1)
    want = np.mean(np.where(labels == 1, -np.log(1 - np.exp(-per) + 1e-31), per))
    np.testing.assert_allclose(hsc_loss(jnp.asarray(a), jnp.asarray(labels)), want, rtol=1e-5)
    masks = np.zeros((4, 3, 5))
    masks[1, :2, :2] = 1
    normal = (a * (1 - masks)).reshape(4, -1).mean(1)
    anom = np.zeros(4)
    anom[1] = -np.log(1 - np.exp(-(a[1] * masks[1]).mean()) + 1e-31)
    np.testing.assert_allclose(hsc_pixel_loss(jnp.asarray(a), jnp.asarray(masks)),
                               np.mean(normal + anom), rtol=1e-5)


def test_patch_pairs_follow_the_code_s_sampling():
    keys = jax.random.split(jax.random.key(0), 400)
    p1, p2, direction = jax.vmap(lambda k: position_pair(k, (256, 256), 64))(keys)
    p1, p2, direction = map(np.asarray, (p1, p2, direction))
    dirs = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
    diff = p2 - p1
    free = np.all((p1 >= 64) & (p1 <= 256 - 128), axis=1)  # no clipping happened
    assert free.sum() > 20
    np.testing.assert_array_equal(np.sign(diff[free]), dirs[direction[free]])
    moved = np.abs(diff[free])[dirs[direction[free]] != 0]
    assert moved.min() >= 48 and moved.max() <= 63  # 3K/4 + U{0..K/4-1}
    assert set(direction) == set(range(8))
    s1, s2 = jax.vmap(lambda k: svdd_pair(k, (256, 256), 64))(keys)
    shift = np.asarray(s2) - np.asarray(s1)
    assert np.abs(shift).max() <= 2 and np.all(np.abs(shift).sum(1) > 0)


def test_patch_svdd_dense_embeddings_equal_those_of_cropped_patches():
    method = PatchSVDD(dim=8)
    images = jax.random.uniform(jax.random.key(0), (1, 96, 96, 3))
    params = method.init(jax.random.key(1), images)["params"]["net"]
    dense64 = method.embed(params, images, 64)
    dense32 = method.embed(params, images, 32)
    for y, x in ((0, 0), (16, 32), (32, 10)):
        np.testing.assert_allclose(dense64[0, y // 2, x // 2],
                                   method.embed(params, images[:, y:y + 64, x:x + 64], 64)[0, 0, 0],
                                   atol=1e-5)
        np.testing.assert_allclose(dense32[0, y // 2, x // 2],
                                   method.embed(params, images[:, y:y + 32, x:x + 32], 32)[0, 0, 0],
                                   atol=1e-5)
    with pytest.raises(ValueError, match="at least 64"):
        method.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_deep_svdd_centre_and_bias_free_network():
    c = jnp.array([0.05, -0.05, 0.0, 0.3, -0.2])
    np.testing.assert_allclose(fix_centre(c), [0.1, -0.1, 0.1, 0.3, -0.2])
    method = DeepSVDD(widths=(4, 4), rep_dim=8, pretrain_steps=0)
    images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
    shapes = method.init(jax.random.key(0), images)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
        shapes["params"])]
    assert names and not any("bias" in n or "scale" in n for n in names)
    assert shapes["frozen"]["centre"].shape == (8,)
    with pytest.raises(ValueError, match="objective"):
        DeepSVDD(objective="hard")


@pytest.mark.parametrize("method", [TINY_FCDD, PatchSVDD(dim=8, updates_per_step=2, pair_batch=4)],
                         ids=lambda m: m.name)
def test_outliers_and_pairs_are_made_inside_the_jitted_step(method):
    assert_generation_in_step(method)
