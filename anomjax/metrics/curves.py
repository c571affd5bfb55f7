"""Threshold sweeps as cumulative counts, and the areas computed from them (jittable).

Every ranking metric here is built from one representation: thresholds in *descending*
order and, for each, the cumulative positive weight ``pos`` and negative weight ``neg`` of
the samples scoring ``>=`` that threshold. Tied scores form one threshold step, as in
scikit-learn: within a run of equal scores every entry carries the counts of the whole run,
so the repeated points add nothing to an area and the curve joins distinct thresholds by
straight lines. The exact metrics get this representation by sorting
(:func:`cumulate_sorted`), the memory-bounded ones from histograms (:mod:`.binned`); the
areas below do not care which.

Undefined results (no positives, no negatives) come out as NaN; callers warn about them.
Eager callers sort on the host (:func:`sorted_padded`, numpy is much faster than XLA's CPU
sort) and pad with weightless entries to a few bucketed lengths, so the jitted sweeps compile
once per bucket instead of once per input size; traced callers sort with
:func:`sort_descending`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_MIN_BUCKET = 1024
_SIGN = np.uint32(0x80000000)


def bucket_size(n: int) -> int:
    """``n`` rounded up to a coarse grid (at most 1/8 larger), so jit compiles per bucket."""
    if n <= _MIN_BUCKET:
        return _MIN_BUCKET
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices sorting flat float32 ``scores`` in descending order (host, numpy).

    Each score becomes an order-reversing unsigned key packed with its index into one
    ``uint64`` that numpy sorts several times faster than XLA's CPU sort of keys and values.
    """
    bits = np.ascontiguousarray(scores, np.float32).view(np.uint32)
    key = np.where(bits & _SIGN, bits, ~bits ^ _SIGN)  # larger score -> smaller key
    if bits.size >= 2**32:
        return np.argsort(key, kind="stable")
    packed = (key.astype(np.uint64) << np.uint64(32)) | np.arange(bits.size, dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64(0xFFFFFFFF)).astype(np.intp)


def sorted_padded(scores, others: list, fill: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """Flatten, sort descending by ``scores`` and pad to :func:`bucket_size` (host side).

    Returns the sorted scores and each of ``others`` in the same order. Padding repeats the
    lowest score, so it joins the last run of ties, and gives ``others`` the ``fill`` values
    (which must carry no weight); the jitted sweeps then compile once per bucket.
    """
    flat = np.asarray(scores, np.float32).ravel()
    order = descending_order(flat)
    extra = bucket_size(flat.size) - flat.size
    flat = np.pad(flat[order], (0, extra), mode="edge")
    rest = [np.pad(np.asarray(o).ravel()[order], (0, extra), constant_values=f)
            for o, f in zip(others, fill, strict=True)]
    return flat, rest


def _accumulator(weight: jax.Array) -> jax.Array:
    """Flat weights in a dtype safe to cumulate: int32 for integer/bool counts, else float32."""
    weight = jnp.asarray(weight).ravel()
    if jnp.issubdtype(weight.dtype, jnp.integer) or weight.dtype == jnp.bool_:
        return weight.astype(jnp.int32)
    return weight.astype(jnp.float32)


def sort_descending(scores: jax.Array, *payload: jax.Array) -> tuple[jax.Array, ...]:
    """Flat ``scores`` sorted descending, with each ``payload`` array in the same order."""
    scores = jnp.asarray(scores, jnp.float32).ravel()
    flat = tuple(jnp.ravel(p) for p in payload)
    neg_scores, *rest = lax.sort((-scores, *flat), num_keys=1)
    return (-neg_scores, *rest)


def cumulate_sorted(thresholds: jax.Array, pos_weight: jax.Array, neg_weight: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cumulative weights at each entry of descending ``[M]`` scores, ties merged.

    Args:
      thresholds: ``[M]`` scores sorted in descending order.
      pos_weight: ``[M]`` weight of each sample as a positive (e.g. 1 for a defect pixel).
      neg_weight: ``[M]`` weight of each sample as a negative.

    Returns:
      ``(pos, neg, is_step)``, each ``[M]``: the cumulative weights at the end of the run of
      tied scores each entry belongs to, and a mask that is True at the last entry of each
      run (one entry per distinct threshold).
    """
    pos = jnp.cumsum(_accumulator(pos_weight)).astype(jnp.float32)
    neg = jnp.cumsum(_accumulator(neg_weight)).astype(jnp.float32)
    m = thresholds.shape[0]
    is_step = jnp.concatenate([thresholds[1:] != thresholds[:-1], jnp.ones((1,), bool)])
    run_end = lax.cummin(jnp.where(is_step, jnp.arange(m), m - 1), reverse=True)
    return pos[run_end], neg[run_end], is_step


def _with_origin(x: jax.Array) -> jax.Array:
    return jnp.concatenate([jnp.zeros((1,), x.dtype), x])


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` with NaN where ``den == 0``."""
    safe = jnp.where(den > 0, den, 1.0)
    return jnp.where(den > 0, num / safe, jnp.nan)


# The areas difference the cumulative *counts* and scale afterwards: the repeated entries of a
# tie run then give exactly zero steps, whereas differencing already-scaled rates lets the
# compiler's fused multiply-adds turn them into rounding noise that adds up over many ties.


@jax.jit
def roc_area(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """Area under the ROC curve (TPR vs FPR) from cumulative ``pos``/``neg`` ``[M]``.

    The curve runs from (0, 0) through every threshold to (1, 1); NaN if a class is absent.
    """
    pos0 = _with_origin(pos)
    d_neg = jnp.diff(_with_origin(neg))
    area = jnp.sum(d_neg * (pos0[1:] + pos0[:-1]))
    return _ratio(area, 2.0 * pos[-1] * neg[-1])


@jax.jit
def partial_area(neg: jax.Array, y: jax.Array, x_max: float | jax.Array) -> jax.Array:
    """Trapezoid area under ``y`` against the rate ``neg / neg[-1]`` from 0 to ``x_max``.

    ``neg`` ``[M]`` are non-decreasing cumulative counts, ``y`` ``[M]`` the curve; it starts
    at (0, 0) and is interpolated linearly at exactly ``x_max``, beyond which nothing counts.
    NaN if ``neg[-1] == 0``.
    """
    neg0 = _with_origin(neg)
    y0 = _with_origin(y)
    x_start = _ratio(neg0[:-1], neg[-1])
    width = _ratio(jnp.diff(neg0), neg[-1])
    kept = jnp.minimum(width, jnp.maximum(x_max - x_start, 0.0))
    fraction = jnp.where(width > 0, kept / jnp.where(width > 0, width, 1.0), 0.0)
    y_end = y0[:-1] + (y0[1:] - y0[:-1]) * fraction
    return jnp.sum(kept * (y0[:-1] + y_end)) * 0.5


@jax.jit
def average_precision_area(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over thresholds, as scikit-learn.

    NaN if there are no positives.
    """
    d_pos = jnp.diff(_with_origin(pos))
    predicted = pos + neg
    precision = jnp.where(predicted > 0, pos / jnp.where(predicted > 0, predicted, 1.0), 1.0)
    return _ratio(jnp.sum(d_pos * precision), pos[-1])


@jax.jit
def f1_scores(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """F1 ``2 TP / (2 TP + FP + FN)`` at every threshold ``[M]``; NaN if there are no positives."""
    n_pos = pos[-1]
    f1 = 2.0 * pos / (pos + neg + jnp.where(n_pos > 0, n_pos, 1.0))
    return jnp.where(n_pos > 0, f1, jnp.nan)
