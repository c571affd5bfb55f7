"""Depthwise convolution as shifted sums: the grouped convolution's numbers and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.nn.depthwise import depthwise_conv_shifted


@pytest.mark.parametrize(("size", "kernel", "stride"), [(9, 3, 1), (10, 5, 2), (7, 5, 2)])
def test_shifted_depthwise_conv_and_its_gradient_match_xla(size, kernel, stride):
    rng = np.random.default_rng(size + kernel + stride)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 4)), jnp.float32)

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=4)

    def shifted(x, w):
        return depthwise_conv_shifted(x, w, (stride, stride))

    np.testing.assert_allclose(jax.jit(shifted)(x, w), jax.jit(xla)(x, w), rtol=1e-5,
                               atol=1e-5)
    grads = [jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
             for f in (shifted, xla)]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
