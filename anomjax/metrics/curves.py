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
Every function here runs on NumPy arrays on the host and on JAX arrays (traced or not) with
the same code (:func:`array_namespace`). Eager callers sort on the host
(:func:`sorted_on_host`) and sweep in NumPy: NumPy's sort and cumulative sums are much faster
than XLA's on the CPU (there a scan of millions of entries costs about a second) and nothing
compiles; the host accumulates in 64 bits. Traced callers sort with :func:`sort_descending`
and the sweeps become part of their jitted program.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_SIGN = np.uint32(0x80000000)


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


def sorted_on_host(scores, others: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """Flatten and sort descending by ``scores`` on the host; each of ``others`` (arrays of
    the same size) is flattened and put in the same order."""
    flat = np.asarray(scores, np.float32).ravel()
    order = descending_order(flat)
    return flat[order], [np.asarray(o).ravel()[order] for o in others]


def array_namespace(*arrays: Any) -> ModuleType:
    """``numpy`` when every argument is a NumPy array or scalar (host computation), else
    ``jax.numpy`` (JAX arrays or tracers)."""
    host = all(isinstance(a, np.ndarray | np.generic | float | int) for a in arrays)
    return np if host else jnp


def _accumulator(xp: ModuleType, weight: Any) -> Any:
    """Flat weights in a dtype safe to cumulate: on the host int64/float64; in JAX int32 for
    integer/bool counts, else float32."""
    weight = xp.asarray(weight).ravel()
    integer = xp.issubdtype(weight.dtype, xp.integer) or weight.dtype == xp.bool_
    if xp is np:
        return weight.astype(np.int64 if integer else np.float64)
    return weight.astype(jnp.int32 if integer else jnp.float32)


def _reverse_cummin(xp: ModuleType, x: Any) -> Any:
    """``y[i] = min(x[i:])``."""
    if xp is np:
        return np.minimum.accumulate(x[::-1])[::-1]
    return lax.cummin(x, reverse=True)


def sort_descending(scores: jax.Array, *payload: jax.Array) -> tuple[jax.Array, ...]:
    """Flat ``scores`` sorted descending, with each ``payload`` array in the same order."""
    scores = jnp.asarray(scores, jnp.float32).ravel()
    flat = tuple(jnp.ravel(p) for p in payload)
    neg_scores, *rest = lax.sort((-scores, *flat), num_keys=1)
    return (-neg_scores, *rest)


def cumulate_sorted(thresholds: Any, pos_weight: Any, neg_weight: Any
                    ) -> tuple[Any, Any, Any]:
    """Cumulative weights at each entry of descending ``[M]`` scores, ties merged.

    Args:
      thresholds: ``[M]`` scores sorted in descending order.
      pos_weight: ``[M]`` weight of each sample as a positive (e.g. 1 for a defect pixel).
      neg_weight: ``[M]`` weight of each sample as a negative.

    Returns:
      ``(pos, neg, is_step)``, each ``[M]``: the cumulative weights at the end of the run of
      tied scores each entry belongs to (float64 on the host, float32 in JAX), and a mask that
      is True at the last entry of each run (one entry per distinct threshold).
    """
    xp = array_namespace(thresholds, pos_weight, neg_weight)
    real = np.float64 if xp is np else jnp.float32
    pos = xp.cumsum(_accumulator(xp, pos_weight)).astype(real)
    neg = xp.cumsum(_accumulator(xp, neg_weight)).astype(real)
    m = thresholds.shape[0]
    is_step = xp.concatenate([thresholds[1:] != thresholds[:-1], xp.ones((1,), bool)])
    run_end = _reverse_cummin(xp, xp.where(is_step, xp.arange(m), m - 1))
    return pos[run_end], neg[run_end], is_step


def _with_origin(xp: ModuleType, x: Any) -> Any:
    return xp.concatenate([xp.zeros((1,), x.dtype), x])


def _ratio(xp: ModuleType, num: Any, den: Any) -> Any:
    """``num / den`` with NaN where ``den == 0``."""
    safe = xp.where(den > 0, den, 1.0)
    return xp.where(den > 0, num / safe, xp.nan)


# The areas difference the cumulative *counts* and scale afterwards: the repeated entries of a
# tie run then give exactly zero steps, whereas differencing already-scaled rates lets the
# compiler's fused multiply-adds turn them into rounding noise that adds up over many ties.


def roc_area(pos: Any, neg: Any) -> Any:
    """Area under the ROC curve (TPR vs FPR) from cumulative ``pos``/``neg`` ``[M]``.

    The curve runs from (0, 0) through every threshold to (1, 1); NaN if a class is absent.
    """
    xp = array_namespace(pos, neg)
    pos0 = _with_origin(xp, pos)
    d_neg = xp.diff(_with_origin(xp, neg))
    area = xp.sum(d_neg * (pos0[1:] + pos0[:-1]))
    return _ratio(xp, area, 2.0 * pos[-1] * neg[-1])


def partial_area(neg: Any, y: Any, x_max: float | Any) -> Any:
    """Trapezoid area under ``y`` against the rate ``neg / neg[-1]`` from 0 to ``x_max``.

    ``neg`` ``[M]`` are non-decreasing cumulative counts, ``y`` ``[M]`` the curve; it starts
    at (0, 0) and is interpolated linearly at exactly ``x_max``, beyond which nothing counts.
    NaN if ``neg[-1] == 0``.
    """
    xp = array_namespace(neg, y, x_max)
    neg0 = _with_origin(xp, neg)
    y0 = _with_origin(xp, y)
    x_start = _ratio(xp, neg0[:-1], neg[-1])
    width = _ratio(xp, xp.diff(neg0), neg[-1])
    kept = xp.minimum(width, xp.maximum(x_max - x_start, 0.0))
    fraction = xp.where(width > 0, kept / xp.where(width > 0, width, 1.0), 0.0)
    y_end = y0[:-1] + (y0[1:] - y0[:-1]) * fraction
    return xp.sum(kept * (y0[:-1] + y_end)) * 0.5


def average_precision_area(pos: Any, neg: Any) -> Any:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over thresholds, as scikit-learn.

    NaN if there are no positives.
    """
    xp = array_namespace(pos, neg)
    d_pos = xp.diff(_with_origin(xp, pos))
    predicted = pos + neg
    precision = xp.where(predicted > 0, pos / xp.where(predicted > 0, predicted, 1.0), 1.0)
    return _ratio(xp, xp.sum(d_pos * precision), pos[-1])


def f1_scores(pos: Any, neg: Any) -> Any:
    """F1 ``2 TP / (2 TP + FP + FN)`` at every threshold ``[M]``; NaN if there are no positives."""
    xp = array_namespace(pos, neg)
    n_pos = pos[-1]
    f1 = 2.0 * pos / (pos + neg + xp.where(n_pos > 0, n_pos, 1.0))
    return xp.where(n_pos > 0, f1, xp.nan)
