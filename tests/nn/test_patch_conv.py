"""k x k convolution as a product over patches: nn.Conv's parameters, numbers and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.nn.patch_conv import PatchConv


@pytest.mark.parametrize(("kernel", "stride", "size"),
                         [(3, 2, 9), (3, 2, 8), (3, 1, 7), (5, 2, 10)])
def test_patch_conv_matches_nn_conv(kernel, stride, size):
    x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size + 1, 3)),
                    jnp.float32)
    ours = PatchConv(4, kernel, stride)
    ref = nn.Conv(4, (kernel, kernel), strides=(stride, stride), padding="SAME", use_bias=False)
    params = ours.init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(0), x)["params"])
    out, ref_out = ours.apply({"params": params}, x), ref.apply({"params": params}, x)
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x)))

    grads = [jax.grad(loss(m), (0, 1))(params, x) for m in (ours, ref)]
    for g, g_ref in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
