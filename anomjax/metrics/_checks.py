"""Input checks shared by the metric functions.

Checks run only on concrete arrays. Under ``jax.jit`` the inputs are tracers, nothing can be
raised or warned, and the jitted metric returns NaN instead (see :mod:`anomjax.metrics`).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for its input (e.g. a single class) and was returned as NaN."""


def is_traced(*arrays: Any) -> bool:
    """True when any argument is a JAX tracer (we are inside ``jit``/``vmap``)."""
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_finite(name: str, values: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if ``values`` holds NaN or +-inf."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(bad.sum()) - n_nan
            first = np.unravel_index(int(np.argmax(bad.ravel())), arr.shape)
            raise ValueError(
                f"{name} contains {n_nan} NaN and {n_inf} infinite values "
                f"(first at index {tuple(int(i) for i in first)}); scores must be finite")


def check_binary_labels(name: str, labels: Any) -> None:
    """Raise ``ValueError`` unless ``labels`` only holds 0 and 1 (or booleans)."""
    arr = np.asarray(labels)
    if arr.dtype == np.bool_:
        return
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be 0/1 integers or booleans, got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        values = np.unique(arr[bad])[:5].tolist()
        raise ValueError(f"{name} must hold only 0 (normal) and 1 (defective), found {values}")


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """Raise ``ValueError`` if the two arrays differ in shape."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{name_a} has shape {np.shape(a)} but {name_b} has shape {np.shape(b)};"
                         " they must match")


def check_ndim(name: str, a: Any, ndim: int, layout: str) -> None:
    """Raise ``ValueError`` unless ``a`` has ``ndim`` dimensions (``layout`` names them)."""
    if np.ndim(a) != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {np.shape(a)}")
    if np.size(a) == 0:
        raise ValueError(f"{name} is empty (shape {np.shape(a)})")


def warn_undefined(metric: str, reason: str) -> None:
    """Warn that ``metric`` is NaN because ``reason``."""
    warnings.warn(f"{metric} is undefined and returned as NaN: {reason}",
                  UndefinedMetricWarning, stacklevel=3)


def pixel_count(maps: Any) -> int:
    """Pixels in ``maps`` without stacking a sequence of separate ``[H, W]`` arrays."""
    if hasattr(maps, "shape"):
        return int(np.prod(maps.shape))
    return sum(int(np.size(m)) for m in maps)
