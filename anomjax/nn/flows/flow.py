"""Flows as ``distrax.Chain``s, densities as ``distrax.Transformed``, and the blocks the
anomaly-detection papers stack.

A flow maps data ``x`` to a latent ``z`` that is standard normal on normal data::

    flow = sequential([block_0..., block_1...])          # data -> latent order
    z, log_det = flow.forward_and_log_det(x)
    log_p = density(flow, (C,)).log_prob(x)             # = N(z; 0, I) + log_det

Blocks (lists of bijectors, data -> latent order):

* :func:`glow_block`: a fixed permutation, then a GLOW coupling transforming both halves
  (DifferNet's and CS-Flow's ``glow_coupling_layer``).
* :func:`all_in_one_block`: FrEIA's ``AllInOneBlock`` as CFLOW-AD's and anomalib's FastFlow
  code use it: affine coupling of the second half (all-in-one soft clamp), a global affine
  with softplus-activated per-channel scale, then a fixed permutation (hard) or random
  rotation (soft).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anomjax._distrax import distrax
from anomjax.nn.flows.bijectors import (
    AffineCoupling,
    ChannelAffine,
    ChannelMix,
    ConditionalAffineCoupling,
    Permute,
    SoftClamp,
    softplus_scale,
)

Array = jax.Array
GAUSSIAN_LOG_NORMALISER = -0.5 * math.log(2 * math.pi)  # log N(0; 0, 1) per dimension


def sequential(bijectors: Sequence[distrax.Bijector]) -> distrax.Chain:
    """The chain applying ``bijectors`` in the given order on the forward (data -> latent)
    pass (``distrax.Chain`` applies its list last-first)."""
    return distrax.Chain(list(reversed(list(bijectors))))


def standard_normal(event_shape: Sequence[int]) -> distrax.Distribution:
    """Standard normal over events of ``event_shape`` (float32)."""
    zeros = jnp.zeros(tuple(event_shape), jnp.float32)
    return distrax.Independent(distrax.Normal(zeros, jnp.ones_like(zeros)),
                               reinterpreted_batch_ndims=len(event_shape))


def density(flow: distrax.Bijector, event_shape: Sequence[int]) -> distrax.Transformed:
    """The density of data whose image under ``flow`` is standard normal:
    ``log p(x) = log N(flow(x); 0, I) + log|det J_flow(x)|``."""
    return distrax.Transformed(standard_normal(event_shape), distrax.Inverse(flow))


def gaussian_log_prob(z: Array, log_det: Array, event_ndims: int = 1) -> Array:
    """``log N(z; 0, I) + log_det`` summed over the trailing ``event_ndims`` axes of ``z``."""
    axes = tuple(range(-event_ndims, 0))
    dims = math.prod(z.shape[z.ndim - event_ndims:])
    return (dims * GAUSSIAN_LOG_NORMALISER
            - 0.5 * jnp.sum(jnp.square(z.astype(jnp.float32)), axis=axes) + log_det)


def random_permutation(seed: int, n: int) -> np.ndarray:
    """``np.random.seed(seed); np.random.permutation(n)``, as DifferNet's and CS-Flow's
    ``permute_layer`` draw it (without touching NumPy's global state)."""
    return np.random.RandomState(seed).permutation(n)


def random_rotation(seed: int, n: int) -> np.ndarray:
    """A random rotation ``[n, n]`` (Haar-distributed special orthogonal matrix, as FrEIA's
    soft permutation draws with ``scipy.stats.special_ortho_group``)."""
    q, r = np.linalg.qr(np.random.RandomState(seed).normal(size=(n, n)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def glow_block(subnet_first: Callable[[Array], Array], subnet_second: Callable[[Array], Array],
               channels: int, clamp: SoftClamp, permutation: np.ndarray,
               event_ndims: int = 1) -> list[distrax.Bijector]:
    """Permutation, then ``y_1 = x_1 e^{s_2(x_2)} + t_2(x_2)`` and
    ``y_2 = x_2 e^{s_1(y_1)} + t_1(y_1)`` with ``x_1`` the first ``channels // 2`` channels.

    ``subnet_first`` maps ``x_2 [..., C - C//2] -> [..., 2 (C//2)]`` (it transforms the first
    half), ``subnet_second`` maps ``y_1 [..., C//2] -> [..., 2 (C - C//2)]``.
    """
    half = channels // 2
    return [Permute(permutation, event_ndims),
            AffineCoupling(subnet_first, half, clamp, transform="first",
                           event_ndims=event_ndims),
            AffineCoupling(subnet_second, half, clamp, transform="second",
                           event_ndims=event_ndims)]


def all_in_one_split(channels: int) -> int:
    """Channels kept (and fed to the subnet) by an all-in-one coupling: ``C - C // 2``."""
    return channels - channels // 2


def all_in_one_block(subnet: Callable[[Array], Array], channels: int, clamp: float,
                     global_affine: dict[str, Any], mixing: np.ndarray, *,
                     context: Array | None = None, soft_permutation: bool = False,
                     event_ndims: int = 1) -> list[distrax.Bijector]:
    """FrEIA's ``AllInOneBlock`` (forward): coupling, global affine, permutation.

    Args:
      subnet: ``[..., (C - C//2) (+ P)] -> [..., 2 (C//2)]``.
      channels: ``C``.
      clamp: ``affine_clamping`` (log-scales ``clamp * tanh(0.1 s)``).
      global_affine: ``{"scale": raw [C], "offset": [C]}``; the scale is
        :func:`~anomjax.nn.flows.bijectors.softplus_scale` of ``raw`` (FrEIA's ``SOFTPLUS``).
      mixing: a permutation ``[C]`` (hard) or, with ``soft_permutation``, a rotation ``[C, C]``.
      context: ``[..., P]`` condition concatenated to the subnet input (CFLOW-AD).
    """
    split, soft = all_in_one_split(channels), SoftClamp("all_in_one", clamp)
    if context is None:
        coupling = AffineCoupling(subnet, split, soft, event_ndims=event_ndims)
    else:
        coupling = ConditionalAffineCoupling(subnet, split, soft, context,
                                             event_ndims=event_ndims)
    affine = ChannelAffine(softplus_scale(global_affine["scale"]), global_affine["offset"],
                           event_ndims)
    # FrEIA applies w_perm as y_i = sum_j w_ij x_j, i.e. y = x @ w.T.
    mix = (ChannelMix(np.asarray(mixing).T, event_ndims) if soft_permutation
           else Permute(mixing, event_ndims))
    return [coupling, affine, mix]


def positional_encoding_2d(dim: int, height: int, width: int) -> np.ndarray:
    """CFLOW-AD's 2-D sinusoidal positional encoding ``[height, width, dim]``.

    The first ``dim / 2`` channels encode the column, the rest the row; within each half,
    even channels are ``sin(pos * f_k)`` and odd ones ``cos(pos * f_k)`` with
    ``f_k = 10000^(-2k / (dim / 2))``.
    """
    if dim % 4:
        raise ValueError(f"positional encoding size must be a multiple of 4, got {dim}")
    half = dim // 2
    freq = np.exp(np.arange(0, half, 2) * -(math.log(1e4) / half))  # [half / 2]
    enc = np.zeros((height, width, dim), np.float32)
    cols, rows = np.arange(width)[:, None] * freq, np.arange(height)[:, None] * freq
    enc[:, :, 0:half:2] = np.sin(cols)[None]
    enc[:, :, 1:half:2] = np.cos(cols)[None]
    enc[:, :, half::2] = np.sin(rows)[:, None]
    enc[:, :, half + 1::2] = np.cos(rows)[:, None]
    return enc
