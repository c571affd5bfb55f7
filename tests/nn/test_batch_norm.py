"""Batch normalisation with batch statistics: the values and gradients of the plain formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.nn.batch_norm import batch_norm_train


def _plain(x, scale, bias, eps):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var


def test_batch_norm_train_matches_the_formula_and_its_automatic_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(3, 5, 4, 6)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=6), jnp.float32)
    bias = jnp.asarray(rng.normal(size=6), jnp.float32)
    for ours, ref in zip(batch_norm_train(x, scale, bias, 1e-3), _plain(x, scale, bias, 1e-3),
                         strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)

    weights = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in (x.shape, (6,), (6,))]

    def objective(f):  # uses y, mean and var, so every cotangent path is checked
        def loss(x, scale, bias):
            y, mean, var = f(x, scale, bias, 1e-3)
            return (jnp.sum(jnp.sin(y) * weights[0]) + jnp.sum(mean * weights[1])
                    + jnp.sum(var * weights[2]))
        return jax.jit(jax.grad(loss, (0, 1, 2)))

    for ours, ref in zip(objective(batch_norm_train)(x, scale, bias),
                         objective(_plain)(x, scale, bias), strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
