"""MemAE's memory module against NumPy formulas; encoder/decoder shapes and errors; the NumPy
initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.nn.conv_ae import (
    BERGMANN_LAYERS,
    ConvDecoder,
    ConvEncoder,
    DCGANCritic,
    DCGANDecoder,
    DCGANEncoder,
    bottleneck_size,
    dcgan_depth,
)
from anomjax.nn.fast_init import init_variables
from anomjax.nn.memory import Memory, addressing_entropy, hard_shrink, memory_init


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("addressing", ["dot", "cosine"])
def test_memory_matches_numpy(addressing):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    module = Memory(slots=10, shrink=0.08, addressing=addressing)
    variables = init_variables(module, jax.random.key(0), z, special={"memory": memory_init})
    mem = np.asarray(variables["params"]["memory"], np.float64)
    assert mem.shape == (10, 6) and np.abs(mem).max() <= 1 / np.sqrt(6)
    out, w = module.apply(variables, z)
    q = z.astype(np.float64)
    if addressing == "cosine":
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
        mem_n = mem / np.linalg.norm(mem, axis=-1, keepdims=True)
        att = _softmax(q @ mem_n.T)
    else:
        att = _softmax(q @ mem.T)
    shrunk = np.maximum(att - 0.08, 0) * att / (np.abs(att - 0.08) + 1e-12)
    shrunk = shrunk / np.maximum(shrunk.sum(-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(np.asarray(w), shrunk, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), shrunk @ mem, atol=1e-5)
    assert (np.asarray(w) == 0).any()  # the shrinkage zeroes small weights


def test_hard_shrink_and_entropy_by_hand():
    w = jnp.asarray([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(hard_shrink(w, 0.25), [[0.5, 0.3, 0.0], [1.0, 0.0, 0.0]],
                               atol=1e-6)
    want = np.mean([-(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)), 0.0])
    np.testing.assert_allclose(float(addressing_entropy(w)), want, rtol=1e-5)


def test_bergmann_encoder_decoder_shapes():
    x = jnp.zeros((2, 32, 32, 3))
    enc = ConvEncoder(BERGMANN_LAYERS, 100)
    variables = init_variables(enc, jax.random.key(0), x)
    # The bottleneck kernel covers the 2 x 2 left of a 32 px input (8 x 8 at 128 px).
    assert variables["params"]["bottleneck"]["kernel"].shape == (2, 2, 32, 100)
    z = enc.apply(variables, x)
    assert z.shape == (2, 100)
    assert enc.apply(variables, x, spatial=True).shape == (2, 2, 2, 32)
    dec = ConvDecoder(BERGMANN_LAYERS, 32)
    out = dec.apply(init_variables(dec, jax.random.key(1), z), z)
    assert out.shape == (2, 32, 32, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="multiple of the encoder's stride 16"):
        bottleneck_size(40, BERGMANN_LAYERS)


def test_dcgan_blocks_shapes_and_sizes():
    assert dcgan_depth(64) == 4
    with pytest.raises(ValueError, match="power-of-two image size"):
        dcgan_depth(48)
    x = jnp.zeros((2, 32, 32, 3))
    enc = DCGANEncoder(32, 8, 16)
    v = init_variables(enc, jax.random.key(0), x, policy="dcgan")
    (z, feats) = enc.apply(v, x)
    assert z.shape == (2, 16) and feats.shape == (2, 4, 4, 32)
    dec = DCGANDecoder(32, 8)
    out = dec.apply(init_variables(dec, jax.random.key(0), z, policy="dcgan"), z)
    assert out.shape == (2, 32, 32, 3)
    critic = DCGANCritic(32, 8, norm="layer")
    logit, _ = critic.apply(init_variables(critic, jax.random.key(0), x, policy="dcgan"), x)
    assert logit.shape == (2,)


def test_fast_init_is_deterministic_and_has_the_stated_distributions():
    module = DCGANEncoder(64, 32, 100)
    x = jnp.zeros((1, 64, 64, 3))
    a = init_variables(module, jax.random.key(3), x, policy="dcgan")
    b = init_variables(module, jax.random.key(3), x, policy="dcgan")
    c = init_variables(module, jax.random.key(4), x, policy="dcgan")
    kernel = np.asarray(a["params"]["conv2"]["kernel"])
    np.testing.assert_array_equal(kernel, b["params"]["conv2"]["kernel"])
    assert not np.array_equal(kernel, c["params"]["conv2"]["kernel"])
    assert abs(kernel.std() - 0.02) < 0.002 and abs(kernel.mean()) < 0.002
    scale = np.asarray(a["params"]["norm2"]["scale"])
    assert abs(scale.mean() - 1) < 0.01 and 0.01 < scale.std() < 0.03
    np.testing.assert_array_equal(a["batch_stats"]["norm2"]["var"], 1)
    lecun = init_variables(ConvEncoder(BERGMANN_LAYERS, 100), jax.random.key(0), x)
    k = np.asarray(lecun["params"]["conv3"]["kernel"])  # 4x4x32 fan-in
    assert abs(k.std() - 1 / np.sqrt(4 * 4 * 32)) < 0.01
