"""Flow bijectors on distrax: invertibility, log-determinants against ``jax.jacfwd``, the
change of variables of a chain, data-dependent ActNorm, the positional encoding, and a flow
that learns a 2-D density."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import multivariate_normal, norm

from anomjax.nn.flows import (
    AffineCoupling,
    ChannelAffine,
    ChannelMix,
    ConditionalAffineCoupling,
    ConvSubnet,
    CrossScaleConv,
    FullyConnected,
    MultiScaleCoupling,
    Permute,
    SoftClamp,
    actnorm,
    actnorm_params,
    all_in_one_block,
    bind,
    density,
    glow_block,
    init_params,
    pack,
    positional_encoding_2d,
    random_permutation,
    random_rotation,
    sequential,
    softplus_scale,
    softplus_scale_init,
    unpack,
)

KEY = jax.random.key(0)


def _fc(in_dim: int, out_dim: int, seed: int = 0, scale: float = 1.0):
    """A bound random MLP ``[..., in_dim] -> [..., out_dim]`` with weights times ``scale``."""
    net = FullyConnected(out_dim, (8,))
    params = init_params(net, jax.random.key(seed), jnp.zeros((1, in_dim)))
    params = jax.tree.map(lambda p: p * scale, params)
    return bind(net, params)


def _conv(in_dim: int, out_dim: int, kernel: int, seed: int = 0):
    net = ConvSubnet(out_dim, 5, kernel)
    params = init_params(net, jax.random.key(seed), jnp.zeros((1, 3, 3, in_dim)))
    return bind(net, params)


def _cross_scale(in_dim: int, out_dim: int, shapes):
    net = CrossScaleConv(out_dim, 6, 3)
    xs = tuple(jnp.zeros((1, *s[:2], in_dim)) for s in shapes)
    params = init_params(net, jax.random.key(3), xs)
    # gamma starts at 0 (identity coupling); give it a value so the test sees a real transform
    params = {**params, "gamma0": jnp.ones(1), "gamma1": jnp.full(1, 0.5),
              "gamma2": jnp.full(1, 2.0)}
    return bind(net, params)


SHAPES = ((4, 4, 2), (2, 2, 2), (1, 1, 2))
CONTEXT = jax.random.normal(jax.random.key(7), (3, 2))


def _bijectors():
    """``(name, bijector, event shape)`` for every bijector kind, small enough for jacfwd."""
    out = []
    for kind in ("tanh", "atan", "all_in_one"):
        for transform in ("first", "second"):
            split = 2
            c_cond, c_t = (split, 3) if transform == "second" else (3, split)
            out.append((f"coupling-fc-{kind}-{transform}",
                        AffineCoupling(_fc(c_cond, 2 * c_t, scale=3.0), split,
                                       SoftClamp(kind, 1.5), transform=transform), (5,)))
    for kernel in (3, 1):
        out.append((f"coupling-conv{kernel}",
                    AffineCoupling(_conv(2, 4, kernel), 2, SoftClamp("tanh", 2.0),
                                   event_ndims=3), (3, 3, 4)))
    out.append(("conditional-coupling",
                ConditionalAffineCoupling(_fc(3 + 2, 4), 3, SoftClamp("all_in_one", 1.9),
                                          CONTEXT), (5,)))
    out.append(("cross-scale-coupling",
                MultiScaleCoupling(_cross_scale(1, 2, SHAPES), SHAPES, 1,
                                   SoftClamp("atan", 3.0), transform="second"),
                (sum(int(np.prod(s)) for s in SHAPES),)))
    out.append(("permute", Permute(random_permutation(3, 5)), (5,)))
    out.append(("channel-mix", ChannelMix(np.random.RandomState(0).normal(size=(4, 4)), 3),
                (2, 2, 4)))
    out.append(("rotation", ChannelMix(random_rotation(1, 5)), (5,)))
    out.append(("channel-affine", ChannelAffine(jnp.asarray([0.5, 2.0, 3.0, 0.1]),
                                                jnp.asarray([1.0, -1.0, 0.0, 2.0]), 3),
                (2, 3, 4)))
    return out


BIJECTORS = _bijectors()


@pytest.mark.parametrize("name,bijector,shape", BIJECTORS, ids=[b[0] for b in BIJECTORS])
def test_inverse_undoes_forward_and_log_det_is_that_of_the_jacobian(name, bijector, shape):
    """Eager and jitted passes agree; inverse(forward(x)) = x; the log-det of each example
    is ``log|det J|`` of the diagonal block of the batch's Jacobian from ``jax.jacfwd``."""
    n = 3
    x = jax.random.normal(jax.random.key(1), (n, *shape))
    y, log_det = bijector.forward_and_log_det(x)
    y_jit, log_det_jit = jax.jit(bijector.forward_and_log_det)(x)
    np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_det_jit, log_det, rtol=1e-5, atol=1e-5)
    assert y.shape == x.shape and log_det.shape == (n,)
    assert not np.allclose(y, x)
    for inverse in (bijector.inverse_and_log_det, jax.jit(bijector.inverse_and_log_det)):
        back, inv_log_det = inverse(y)
        np.testing.assert_allclose(back, x, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(inv_log_det, -log_det, atol=1e-4, rtol=1e-5)
    d = x[0].size
    jac = jax.jit(jax.jacfwd(lambda v: bijector.forward(v.reshape(x.shape)).reshape(-1)))(
        x.reshape(-1))
    jac = np.asarray(jac, np.float64)
    for i in range(n):
        sign, want = np.linalg.slogdet(jac[i * d:(i + 1) * d, i * d:(i + 1) * d])
        assert sign != 0
        np.testing.assert_allclose(float(log_det[i]), want, atol=2e-4, rtol=1e-4)


def test_bijectors_vmap():
    name, bijector, shape = BIJECTORS[1]
    x = jax.random.normal(jax.random.key(2), (4, *shape))
    y, ld = jax.vmap(lambda v: bijector.forward_and_log_det(v[None]))(x)
    y0, ld0 = bijector.forward_and_log_det(x)
    np.testing.assert_allclose(y[:, 0], y0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ld[:, 0], ld0, rtol=1e-5, atol=1e-5)


def test_soft_clamps_are_the_papers_formulas():
    s = np.linspace(-20, 20, 41).astype(np.float32)
    t = np.ones_like(s)
    ls, sh = SoftClamp("tanh", 2.0)(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(ls, 2.0 * np.tanh(s / 2.0), rtol=1e-6)
    ls, _ = SoftClamp("atan", 3.0)(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(ls, 3.0 * 0.636 * np.arctan(s / 3.0), rtol=1e-6)
    ls, sh = SoftClamp("all_in_one", 1.9)(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(ls, 1.9 * np.tanh(0.1 * s), rtol=1e-6)
    np.testing.assert_allclose(sh, 0.1, rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        SoftClamp("sigmoid", 1.0)


def test_chain_log_prob_is_the_change_of_variables():
    """``density(flow).log_prob(x)`` = ``log N(f(x); 0, I) + log|det df/dx|`` computed with
    SciPy's normal density and the Jacobian from ``jax.jacfwd``."""
    c = 4
    blocks = (all_in_one_block(_fc(2, 4, seed=1), c, 2.0,
                               {"scale": jnp.full(c, 0.3), "offset": jnp.arange(c) * 0.1},
                               random_permutation(0, c))
              + glow_block(_fc(2, 4, seed=2, scale=2.0), _fc(2, 4, seed=3), c,
                           SoftClamp("atan", 3.0), random_permutation(1, c)))
    flow = sequential(blocks)
    x = jax.random.normal(jax.random.key(5), (6, c))
    # the chain applies the blocks in the listed order
    by_hand = x
    for b in blocks:
        by_hand = b.forward(by_hand)
    np.testing.assert_allclose(flow.forward(x), by_hand, rtol=1e-5, atol=1e-6)
    eager = np.asarray(density(flow, (c,)).log_prob(x))
    jitted = np.asarray(jax.jit(lambda v: density(flow, (c,)).log_prob(v))(x))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    z = np.asarray(flow.forward(x), np.float64)
    jac = np.asarray(jax.jit(jax.jacfwd(lambda v: flow.forward(v.reshape(6, c)).reshape(-1)))(
        x.reshape(-1)), np.float64)
    for i in range(6):
        block = jac[i * c:(i + 1) * c, i * c:(i + 1) * c]
        want = norm.logpdf(z[i]).sum() + np.linalg.slogdet(block)[1]
        assert eager[i] == pytest.approx(want, abs=1e-3)


def test_actnorm_initialisation_standardises_the_batch():
    x = jax.random.normal(jax.random.key(3), (64, 5, 5, 3)) * jnp.asarray([0.2, 3.0, 10.0]) + 4
    y, log_det = actnorm(actnorm_params(x), event_ndims=3).forward_and_log_det(x)
    flat = np.asarray(y).reshape(-1, 3)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0), 1, rtol=1e-4)
    std = np.asarray(x).reshape(-1, 3).std(0)
    np.testing.assert_allclose(log_det, -25 * np.log(std).sum(), rtol=1e-4)


def test_softplus_global_scale_starts_at_one():
    assert float(softplus_scale(softplus_scale_init(1.0))) == pytest.approx(1.0, rel=1e-6)
    # FrEIA: 0.1 * softplus(x, beta=0.5) = 0.1 * 2 * log(1 + exp(0.5 x))
    assert float(softplus_scale(3.0)) == pytest.approx(0.2 * math.log1p(math.exp(1.5)))


def test_pack_unpack_and_permutations():
    maps = [jnp.arange(2 * int(np.prod(s)), dtype=jnp.float32).reshape(2, *s) for s in SHAPES]
    flat = pack(maps)
    assert flat.shape == (2, 42)
    for a, b in zip(unpack(flat, SHAPES), maps, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(random_permutation(4, 10),
                                  np.random.RandomState(4).permutation(10))
    r = random_rotation(2, 6)
    np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-10)
    assert np.linalg.det(r) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="permutation"):
        Permute(np.array([0, 0, 1]))


def test_positional_encoding_matches_the_transformer_formula():
    dim, h, w = 8, 3, 5
    enc = positional_encoding_2d(dim, h, w)
    assert enc.shape == (h, w, dim)
    half = dim // 2
    for y in range(h):
        for x in range(w):
            for i in range(half // 2):
                f = 1.0 / 10000 ** (2 * i / half)
                assert enc[y, x, 2 * i] == pytest.approx(math.sin(x * f), abs=1e-6)
                assert enc[y, x, 2 * i + 1] == pytest.approx(math.cos(x * f), abs=1e-6)
                assert enc[y, x, half + 2 * i] == pytest.approx(math.sin(y * f), abs=1e-6)
                assert enc[y, x, half + 2 * i + 1] == pytest.approx(math.cos(y * f), abs=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding_2d(6, 2, 2)


def _mixture_log_prob(x: np.ndarray) -> np.ndarray:
    """Two Gaussians at (-2, 0) and (2, 0.5), std 0.5, equal weights."""
    a = multivariate_normal([-2.0, 0.0], 0.25 * np.eye(2)).logpdf(x)
    b = multivariate_normal([2.0, 0.5], 0.25 * np.eye(2)).logpdf(x)
    return np.logaddexp(a, b) - math.log(2)


def _mixture_sample(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = np.array([[-2.0, 0.0], [2.0, 0.5]])[rng.integers(0, 2, n)]
    return (centres + 0.5 * rng.normal(size=(n, 2))).astype(np.float32)


def test_a_trained_flow_recovers_a_2d_density():
    """A 6-block GLOW flow fitted by maximum likelihood: KL(p || q) on held-out samples is
    small, and far below that of the best single Gaussian."""
    blocks, hidden = 6, 32
    net = FullyConnected(2, (hidden, hidden))
    params = [init_params(net, jax.random.key(i), jnp.zeros((1, 1))) for i in range(2 * blocks)]
    clamp = SoftClamp("atan", 3.0)

    def flow_of(ps):
        bijectors = []
        for k in range(blocks):
            bijectors += glow_block(bind(net, ps[2 * k]), bind(net, ps[2 * k + 1]), 2, clamp,
                                    random_permutation(k, 2))
        return sequential(bijectors)

    def nll(ps, x):
        return -jnp.mean(density(flow_of(ps), (2,)).log_prob(x))

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(ps, s, x):
        loss, grads = jax.value_and_grad(nll)(ps, x)
        updates, s = opt.update(grads, s, ps)
        return optax.apply_updates(ps, updates), s, loss

    rng = np.random.default_rng(0)
    for _ in range(400):
        params, state, _ = step(params, state, jnp.asarray(_mixture_sample(rng, 256)))
    held_out = _mixture_sample(np.random.default_rng(1), 4000)
    true_lp = _mixture_log_prob(held_out)
    flow_lp = np.asarray(jax.jit(lambda ps, x: density(flow_of(ps), (2,)).log_prob(x))(
        params, jnp.asarray(held_out)))
    kl_flow = float(np.mean(true_lp - flow_lp))
    gauss = multivariate_normal(held_out.mean(0), np.cov(held_out.T))
    kl_gauss = float(np.mean(true_lp - gauss.logpdf(held_out)))
    assert kl_flow < 0.08, (kl_flow, kl_gauss)
    assert kl_flow < 0.2 * kl_gauss, (kl_flow, kl_gauss)


def test_a_bfloat16_subnet_keeps_the_coupling_and_log_det_in_float32():
    """Under the engine's bfloat16 option the subnet runs in bfloat16 but the affine
    arithmetic and the log-determinant stay float32 (close to the float32 result)."""
    net = FullyConnected(6, (16,))
    params = init_params(net, jax.random.key(0), jnp.zeros((1, 2)))
    half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    x = jax.random.normal(jax.random.key(1), (4, 5))
    full = AffineCoupling(bind(net, params), 2, SoftClamp("tanh", 2.0))
    low = AffineCoupling(bind(net, half), 2, SoftClamp("tanh", 2.0))
    y, log_det = jax.jit(low.forward_and_log_det)(x.astype(jnp.bfloat16))
    assert y.dtype == jnp.float32 and log_det.dtype == jnp.float32
    y_ref, log_det_ref = full.forward_and_log_det(x)
    np.testing.assert_allclose(log_det, log_det_ref, atol=0.1)
    np.testing.assert_allclose(y, y_ref, atol=0.1)
