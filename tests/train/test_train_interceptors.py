"""The layer reformulations used for training: exact up to rounding, gradients included."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.train.interceptors import (
    apply_with,
    batch_norm_in_train_mode,
    depthwise_conv_as_shifts,
    depthwise_conv_shifted,
)


@pytest.mark.parametrize(("size", "kernel", "stride"), [(9, 3, 1), (10, 5, 2), (7, 5, 2)])
def test_shifted_depthwise_conv_matches_xla(size, kernel, stride):
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


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (1, 1), use_bias=False)(x)
        x = nn.Conv(6, (3, 3), strides=2, padding="SAME", feature_group_count=6,
                    use_bias=False)(x)
        return nn.BatchNorm(use_running_average=True, epsilon=1e-3)(x)


def test_interceptors_change_only_what_they_say():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) * 2 + 1
    net = _Net()
    variables = net.init(jax.random.key(1), x)
    frozen = jax.jit(net.apply)(variables, x)
    # Depthwise as shifts: same output as the module itself.
    shifted = jax.jit(lambda v, x: apply_with(net, v, x,
                                              interceptors=[depthwise_conv_as_shifts()]))
    np.testing.assert_allclose(shifted(variables, x), frozen, rtol=1e-5, atol=1e-5)
    # Train-mode batch norm: batch statistics, and running ones updated like PyTorch.
    out, updates = jax.jit(lambda v, x: apply_with(
        net, v, x, mutable=["batch_stats"],
        interceptors=[depthwise_conv_as_shifts(), batch_norm_in_train_mode(momentum=0.9)]))(
        variables, x)
    p = variables["params"]
    h = jax.lax.conv_general_dilated(
        jnp.einsum("bhwc,cd->bhwd", x, p["Conv_0"]["kernel"][0, 0]), p["Conv_1"]["kernel"],
        (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
    mean, var = np.mean(h, axis=(0, 1, 2)), np.var(h, axis=(0, 1, 2))
    np.testing.assert_allclose(out, (h - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    n = h.size // 6
    stats = updates["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    # Gradients flow through the batch statistics.
    grad = jax.jit(jax.grad(lambda p: jnp.sum(apply_with(
        net, {"params": p, "batch_stats": variables["batch_stats"]}, x,
        mutable=["batch_stats"], interceptors=[batch_norm_in_train_mode()])[0][..., 0] ** 3)))(
        variables["params"])
    assert float(jnp.abs(grad["Conv_0"]["kernel"]).sum()) > 0
