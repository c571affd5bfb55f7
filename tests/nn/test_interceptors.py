"""Train-mode batch norm through an interceptor: batch statistics, PyTorch-style updates."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode


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
    # Without interceptors: the module itself.
    np.testing.assert_allclose(jax.jit(lambda v, x: apply_with(net, v, x))(variables, x),
                               jax.jit(net.apply)(variables, x), rtol=1e-6)
    # Train-mode batch norm: batch statistics, and running ones updated like PyTorch.
    out, updates = jax.jit(lambda v, x: apply_with(
        net, v, x, mutable=["batch_stats"],
        interceptors=[batch_norm_in_train_mode(momentum=0.9)]))(
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
