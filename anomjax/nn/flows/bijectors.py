"""Invertible layers of the anomaly-detection flows as ``distrax.Bijector`` subclasses.

Every bijector maps a data point ``x`` (event shape ``[..., C]``, or ``[H, W, C]`` maps with
``event_ndims=3``) to ``y`` and returns ``log|det dy/dx|`` summed over the event, shape = the
batch shape. They are plain Python objects holding arrays and callables: build them from a
parameter pytree inside the jitted function (``jax.jit``/``jax.vmap`` then trace through
them). Log-determinants and the affine arithmetic run in float32 whatever the subnet's dtype
(the engine's bfloat16 option casts params and features, not the density).

* :class:`AffineCoupling`: one half of the channels scales and shifts the other; the
  subnet is any callable ``[..., c_cond] -> [..., 2 c_t]`` (fully connected, 3x3 or 1x1 conv).
* :class:`ConditionalAffineCoupling`: the same with a context (e.g. a positional encoding)
  concatenated to the subnet's input, as CFLOW-AD's decoders use.
* :class:`MultiScaleCoupling`: the coupling of CS-Flow over several maps packed into one
  vector, with one subnet seeing every scale (cross-scale convolutions).
* :class:`Permute`: a fixed permutation of the last axis; :class:`ChannelMix`: a fixed
  invertible channel matrix (FrEIA's "soft" permutation, a random rotation).
* :class:`ChannelAffine`: ``y = x * scale + shift`` per channel: ActNorm (with
  :func:`actnorm_params` for data-dependent initialisation) and the all-in-one block's global
  affine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anomjax._distrax import distrax

Array = jax.Array
Subnet = Callable[[Array], Array]

_ATAN_FACTOR = 0.636  # DifferNet / CS-Flow code: clamp * 0.636 * atan(s / clamp), 0.636 ~ 2/pi


@dataclasses.dataclass(frozen=True)
class SoftClamp:
    """Maps a subnet's raw ``(s, t)`` to the coupling's ``(log_scale, shift)``.

    Kinds (``clamp`` = the bound ``c`` of ``|log_scale|``):

    * ``"tanh"``: ``c * tanh(s / c)`` (the form of the FastFlow and CFLOW-AD papers).
    * ``"atan"``: ``c * 0.636 * atan(s / c)`` (DifferNet's and CS-Flow's code).
    * ``"all_in_one"``: FrEIA's ``AllInOneBlock``: the raw output is multiplied by 0.1 first,
      ``log_scale = c * tanh(0.1 s)``, ``shift = 0.1 t`` (CFLOW-AD's code, anomalib's FastFlow).
    """

    kind: str = "tanh"
    clamp: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in ("tanh", "atan", "all_in_one"):
            raise ValueError(f"SoftClamp kind must be 'tanh', 'atan' or 'all_in_one', got "
                             f"{self.kind!r}")
        if not self.clamp > 0:
            raise ValueError(f"SoftClamp clamp must be > 0, got {self.clamp}")

    def __call__(self, s: Array, t: Array) -> tuple[Array, Array]:
        c = self.clamp
        if self.kind == "tanh":
            return c * jnp.tanh(s / c), t
        if self.kind == "atan":
            return c * _ATAN_FACTOR * jnp.arctan(s / c), t
        return c * jnp.tanh(0.1 * s), 0.1 * t


def _event_sum(x: Array, event_ndims: int) -> Array:
    """Sum over the trailing ``event_ndims`` axes (float32)."""
    return jnp.sum(x.astype(jnp.float32), axis=tuple(range(-event_ndims, 0)))


def _affine_forward(x_t: Array, raw: Array, clamp: SoftClamp) -> tuple[Array, Array]:
    """``x_t * exp(log_scale) + shift`` and ``log_scale`` from ``raw = [s, t]`` (last axis)."""
    c = x_t.shape[-1]
    log_scale, shift = clamp(raw[..., :c].astype(jnp.float32), raw[..., c:].astype(jnp.float32))
    return x_t.astype(jnp.float32) * jnp.exp(log_scale) + shift, log_scale


def _affine_inverse(y_t: Array, raw: Array, clamp: SoftClamp) -> tuple[Array, Array]:
    c = y_t.shape[-1]
    log_scale, shift = clamp(raw[..., :c].astype(jnp.float32), raw[..., c:].astype(jnp.float32))
    return (y_t.astype(jnp.float32) - shift) * jnp.exp(-log_scale), log_scale


def _split(x: Array, split: int, transform: str) -> tuple[Array, Array]:
    """``(conditioning part, transformed part)`` of ``x``'s last axis split at ``split``."""
    a, b = x[..., :split], x[..., split:]
    return (a, b) if transform == "second" else (b, a)


def _join(cond: Array, out: Array, transform: str) -> Array:
    """Inverse of :func:`_split` (float32)."""
    cond = cond.astype(out.dtype)
    return jnp.concatenate((cond, out) if transform == "second" else (out, cond), axis=-1)


def _check_transform(transform: str) -> None:
    if transform not in ("first", "second"):
        raise ValueError(f"transform must be 'first' or 'second', got {transform!r}")


class AffineCoupling(distrax.Bijector):
    """Affine coupling of the last axis split at ``split``: ``[x_a, x_b]``.

    With ``transform="second"`` (RealNVP/GLOW/FrEIA convention) ``x_a`` is kept and
    ``y_b = x_b * exp(log_scale) + shift`` with ``(s, t) = subnet(x_a)``; with
    ``transform="first"`` the roles swap. A GLOW coupling that transforms both halves
    (DifferNet, CS-Flow) is the chain of a ``"first"`` and a ``"second"`` coupling.

    Args:
      subnet: ``[..., c_cond] -> [..., 2 * c_t]`` (``s`` first, then ``t``).
      split: number of channels of ``x_a``.
      clamp: the :class:`SoftClamp` of the log-scales.
      transform: ``"second"`` or ``"first"``: which part is transformed.
      event_ndims: 1 for vectors ``[C]``, 3 for maps ``[H, W, C]``.
    """

    def __init__(self, subnet: Subnet, split: int, clamp: SoftClamp, *,
                 transform: str = "second", event_ndims: int = 1):
        super().__init__(event_ndims_in=event_ndims)
        _check_transform(transform)
        self._subnet, self._split, self._clamp = subnet, split, clamp
        self._transform = transform

    def _condition(self, x_cond: Array) -> Array:
        return self._subnet(x_cond)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        cond, x_t = _split(x, self._split, self._transform)
        y_t, log_scale = _affine_forward(x_t, self._condition(cond), self._clamp)
        return _join(cond, y_t, self._transform), _event_sum(log_scale, self.event_ndims_in)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        cond, y_t = _split(y, self._split, self._transform)
        x_t, log_scale = _affine_inverse(y_t, self._condition(cond), self._clamp)
        return _join(cond, x_t, self._transform), -_event_sum(log_scale, self.event_ndims_in)


class ConditionalAffineCoupling(AffineCoupling):
    """:class:`AffineCoupling` whose subnet sees ``concat([x_cond, context], -1)``.

    ``context`` ``[..., P]`` has the batch (and, for maps, spatial) shape of ``x`` and is not
    transformed: distrax bijectors have no conditioning argument, so the context is bound
    when the bijector is built (inside the jitted function, per batch).
    """

    def __init__(self, subnet: Subnet, split: int, clamp: SoftClamp, context: Array, *,
                 transform: str = "second", event_ndims: int = 1):
        super().__init__(subnet, split, clamp, transform=transform, event_ndims=event_ndims)
        self._context = context

    def _condition(self, x_cond: Array) -> Array:
        context = jnp.broadcast_to(self._context.astype(x_cond.dtype),
                                   (*x_cond.shape[:-1], self._context.shape[-1]))
        return self._subnet(jnp.concatenate([x_cond, context], axis=-1))


def pack(maps: Sequence[Array]) -> Array:
    """Maps ``[B, h_i, w_i, C]`` -> one vector ``[B, sum h_i w_i C]`` (row-major each)."""
    return jnp.concatenate([m.reshape(m.shape[0], -1) for m in maps], axis=-1)


def unpack(x: Array, shapes: Sequence[tuple[int, int, int]]) -> list[Array]:
    """Inverse of :func:`pack` for event ``shapes`` ``[(h_i, w_i, C), ...]``."""
    sizes = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    return [x[..., sizes[i]:sizes[i + 1]].reshape(*x.shape[:-1], *s)
            for i, s in enumerate(shapes)]


class MultiScaleCoupling(distrax.Bijector):
    """CS-Flow's coupling on several maps packed into one vector ``[B, D]`` (:func:`pack`).

    Each map's channels are split at ``split``; one subnet maps the tuple of conditioning
    halves of all scales to a tuple of raw ``(s, t)`` maps, so every scale's transform sees
    the others (cross-scale convolutions); ``transform`` as in :class:`AffineCoupling`.

    Args:
      subnet: ``tuple of [B, h_i, w_i, c_cond] -> tuple of [B, h_i, w_i, 2 c_t]``.
      shapes: the event shape ``(h_i, w_i, C)`` of each scale.
    """

    def __init__(self, subnet: Callable[[tuple[Array, ...]], tuple[Array, ...]],
                 shapes: Sequence[tuple[int, int, int]], split: int, clamp: SoftClamp, *,
                 transform: str = "second"):
        super().__init__(event_ndims_in=1)
        _check_transform(transform)
        self._subnet, self._shapes, self._clamp = subnet, tuple(shapes), clamp
        self._split, self._transform = split, transform

    def _run(self, x: Array, inverse: bool) -> tuple[Array, Array]:
        parts = [_split(m, self._split, self._transform) for m in unpack(x, self._shapes)]
        raws = self._subnet(tuple(p[0] for p in parts))
        step = _affine_inverse if inverse else _affine_forward
        out, log_det = [], jnp.zeros(x.shape[:-1], jnp.float32)
        for (cond, x_t), raw in zip(parts, raws, strict=True):
            y_t, log_scale = step(x_t, raw, self._clamp)
            out.append(_join(cond, y_t, self._transform))
            log_det = log_det + _event_sum(log_scale, 3)
        return pack(out), -log_det if inverse else log_det

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return self._run(x, inverse=False)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        return self._run(y, inverse=True)


class Permute(distrax.Bijector):
    """A fixed permutation of the last axis: ``y = x[..., permutation]``; log-det 0."""

    def __init__(self, permutation: np.ndarray, event_ndims: int = 1):
        super().__init__(event_ndims_in=event_ndims, is_constant_jacobian=True)
        perm = np.asarray(permutation)
        if sorted(perm.tolist()) != list(range(perm.size)):
            raise ValueError("Permute needs a permutation of 0..n-1")
        self._perm, self._inv = perm, np.argsort(perm)

    def _zero(self, x: Array) -> Array:
        return jnp.zeros(x.shape[:x.ndim - self.event_ndims_in], jnp.float32)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return x[..., self._perm], self._zero(x)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        return y[..., self._inv], self._zero(y)


def _positions(x: Array, event_ndims: int) -> int:
    """Number of positions of an event ``[..., C]`` (1 for a vector)."""
    return int(np.prod(x.shape[x.ndim - event_ndims:-1], dtype=np.int64))


class ChannelMix(distrax.Bijector):
    """A fixed invertible matrix over channels at every position: ``y = x @ matrix``.

    Log-det ``= positions * log|det matrix|`` (0 for the random rotations of FrEIA's soft
    permutation); the product runs at the default precision (see
    :mod:`anomjax.precision`).
    """

    def __init__(self, matrix: np.ndarray, event_ndims: int = 1):
        super().__init__(event_ndims_in=event_ndims, is_constant_jacobian=True)
        m = np.asarray(matrix, np.float64)
        sign, logdet = np.linalg.slogdet(m)
        if sign == 0:
            raise ValueError("ChannelMix needs an invertible matrix")
        self._m, self._inv = m.astype(np.float32), np.linalg.inv(m).astype(np.float32)
        self._logdet = float(logdet)

    def _apply(self, x: Array, m: np.ndarray) -> tuple[Array, Array]:
        y = jnp.matmul(x.astype(jnp.float32), m)
        batch = x.shape[:x.ndim - self.event_ndims_in]
        return y, jnp.full(batch, _positions(x, self.event_ndims_in) * self._logdet,
                           jnp.float32)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return self._apply(x, self._m)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        out, log_det = self._apply(y, self._inv)
        return out, -log_det


class ChannelAffine(distrax.Bijector):
    """``y = x * scale + shift`` with per-channel ``scale > 0`` and ``shift`` ``[C]``.

    Log-det ``= positions * sum(log scale)``. ActNorm is this bijector with
    ``scale = exp(log_scale)`` initialised by :func:`actnorm_params`; FrEIA's all-in-one
    block's global affine is it with ``scale = 0.2 * softplus(0.5 * raw)``
    (:func:`softplus_scale`).
    """

    def __init__(self, scale: Array, shift: Array, event_ndims: int = 1):
        super().__init__(event_ndims_in=event_ndims)
        self._scale = jnp.asarray(scale, jnp.float32)
        self._shift = jnp.asarray(shift, jnp.float32)

    def _log_det(self, x: Array) -> Array:
        batch = x.shape[:x.ndim - self.event_ndims_in]
        per_position = jnp.sum(jnp.log(self._scale))
        return jnp.broadcast_to(_positions(x, self.event_ndims_in) * per_position, batch)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return x.astype(jnp.float32) * self._scale + self._shift, self._log_det(x)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        return (y.astype(jnp.float32) - self._shift) / self._scale, -self._log_det(y)


def actnorm_params(x: Array, eps: float = 1e-6) -> dict[str, Array]:
    """Data-dependent ActNorm initialisation (Kingma & Dhariwal 2018) from a batch
    ``x [..., C]``: ``{"log_scale", "shift"}`` ``[C]`` so that ``x * exp(log_scale) + shift``
    has zero mean and unit variance per channel over all leading axes."""
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    mean, std = jnp.mean(flat, axis=0), jnp.std(flat, axis=0)
    log_scale = -jnp.log(std + eps)
    return {"log_scale": log_scale, "shift": -mean * jnp.exp(log_scale)}


def actnorm(params: dict[str, Any], event_ndims: int = 1) -> ChannelAffine:
    """The ActNorm bijector of ``params`` from :func:`actnorm_params` (or trained)."""
    return ChannelAffine(jnp.exp(params["log_scale"]), params["shift"], event_ndims)


def softplus_scale(raw: Array) -> Array:
    """FrEIA's ``SOFTPLUS`` global scale ``0.1 * softplus(raw, beta=0.5)``, positive."""
    return 0.2 * jax.nn.softplus(0.5 * jnp.asarray(raw, jnp.float32))


def softplus_scale_init(init: float = 1.0) -> float:
    """The raw value whose :func:`softplus_scale` is ``init`` (FrEIA's initialisation)."""
    return float(2.0 * np.log(np.expm1(5.0 * init)))
