"""Convolutions written as matrix products (1x1 pointwise, k x k over patches): nn.Conv's
parameters, numbers and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.nn.patch_conv import PatchConv
from anomjax.nn.pointwise import PointwiseConv


def _init_and_compare(ours: nn.Module, ref: nn.Module, x: jax.Array,
                      params: dict | None = None) -> jax.Array:
    """Check that both modules have the same parameter shapes, then that with the same
    parameters (``ours``'s init, or ``params``) they give the same values and gradients;
    returns ``ours``'s output."""
    init = ours.init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(0), x)["params"])
    params = init if params is None else params(init)
    out, ref_out = ours.apply({"params": params}, x), ref.apply({"params": params}, x)
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x)))

    grads = [jax.grad(loss(m), (0, 1))(params, x) for m in (ours, ref)]
    for g, g_ref in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
    return out


@pytest.mark.parametrize(("stride", "use_bias", "size"), [(1, False, 6), (2, True, 7)])
def test_pointwise_conv_matches_nn_conv(stride, use_bias, size):
    x = jnp.asarray(np.random.default_rng(stride).normal(size=(2, size, size + 1, 5)),
                    jnp.float32)
    ref = nn.Conv(3, (1, 1), strides=(stride, stride), padding="VALID", use_bias=use_bias)
    with_bias = (lambda p: {**p, "bias": jnp.arange(3.0)}) if use_bias else None
    out = _init_and_compare(PointwiseConv(3, stride, use_bias=use_bias), ref, x, with_bias)
    assert out.shape == (2, -(-size // stride), -(-(size + 1) // stride), 3)


@pytest.mark.parametrize(("kernel", "stride", "size"),
                         [(3, 2, 9), (3, 2, 8), (3, 1, 7), (5, 2, 10)])
def test_patch_conv_matches_nn_conv(kernel, stride, size):
    x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size + 1, 3)),
                    jnp.float32)
    ref = nn.Conv(4, (kernel, kernel), strides=(stride, stride), padding="SAME", use_bias=False)
    _init_and_compare(PatchConv(4, kernel, stride), ref, x)
