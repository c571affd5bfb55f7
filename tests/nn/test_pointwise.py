"""1x1 convolution as a matrix product: nn.Conv's parameters, numbers and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.nn.pointwise import PointwiseConv


@pytest.mark.parametrize(("stride", "use_bias", "size"), [(1, False, 6), (2, True, 7)])
def test_pointwise_conv_matches_nn_conv(stride, use_bias, size):
    x = jnp.asarray(np.random.default_rng(stride).normal(size=(2, size, size + 1, 5)),
                    jnp.float32)
    ours = PointwiseConv(3, stride, use_bias=use_bias)
    ref = nn.Conv(3, (1, 1), strides=(stride, stride), padding="VALID", use_bias=use_bias)
    params = ours.init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(0), x)["params"])
    if use_bias:
        params = {**params, "bias": jnp.arange(3.0)}
    out, ref_out = ours.apply({"params": params}, x), ref.apply({"params": params}, x)
    assert out.shape == (2, -(-size // stride), -(-(size + 1) // stride), 3)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x)))

    grads = [jax.grad(loss(m), (0, 1))(params, x) for m in (ours, ref)]
    for g, g_ref in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
