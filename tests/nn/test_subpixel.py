"""The subpixel transposed convolution equals ``lax.conv_transpose`` (the reference), value
and gradients, and ``flax.linen.ConvTranspose`` with the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from anomjax.nn.subpixel import SubpixelConvTranspose, conv_transpose_subpixel

HIGHEST = lax.Precision.HIGHEST
DIMENSIONS = ("NHWC", "HWIO", "NHWC")
CASES = [(4, 2, "SAME"), (3, 2, "SAME"), (5, 2, "SAME"), (2, 2, "VALID"), (4, 4, "SAME"),
         (3, 3, "SAME")]


def _reference(x, w, stride, padding):
    return lax.conv_transpose(x, w, (stride, stride), padding, dimension_numbers=DIMENSIONS,
                              precision=HIGHEST)


@pytest.mark.parametrize("kernel,stride,padding", CASES)
def test_equals_lax_conv_transpose_and_its_gradients(kernel, stride, padding):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = jnp.asarray(rng.standard_normal((2, 5, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 4)), jnp.float32)
    got = conv_transpose_subpixel(x, w, stride, padding, HIGHEST)
    want = _reference(x, w, stride, padding)
    assert got.shape == (2, 5 * stride, 6 * stride, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    target = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)

    def loss(fn):
        return lambda x, w: jnp.sum((fn(x, w) - target) ** 2)

    g_got = jax.grad(loss(lambda x, w: conv_transpose_subpixel(x, w, stride, padding,
                                                               HIGHEST)), (0, 1))(x, w)
    g_want = jax.grad(loss(lambda x, w: _reference(x, w, stride, padding)), (0, 1))(x, w)
    for a, b in zip(g_got, g_want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_module_matches_flax_conv_transpose_parameters_and_outputs():
    x = jnp.asarray(np.random.default_rng(0).random((2, 4, 4, 3)), jnp.float32)
    ours = SubpixelConvTranspose(5, 4, 2, "SAME", precision=HIGHEST)
    flax_layer = nn.ConvTranspose(5, (4, 4), (2, 2), "SAME", precision=HIGHEST)
    params = ours.init(jax.random.key(0), x)
    reference_params = flax_layer.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, params, reference_params)  # same init
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    np.testing.assert_allclose(ours.apply(params, x), flax_layer.apply(params, x),
                               rtol=1e-5, atol=1e-6)


def test_padding_without_a_phase_decomposition_is_refused():
    with pytest.raises(ValueError, match="does not give 2 x the input"):
        conv_transpose_subpixel(jnp.zeros((1, 3, 3, 1)), jnp.zeros((4, 4, 1, 1)), 2, "VALID")
