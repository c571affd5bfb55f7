"""Fill a Flax variables template from a PyTorch-layout state dict, checking every tensor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

# Flax leaf name -> PyTorch parameter suffix.
TORCH_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def torch_to_flax(template: Mapping[str, Any], state_dict: Mapping[str, np.ndarray],
                  module_key: Callable[[tuple[str, ...]], str], source: str) -> dict[str, Any]:
    """Variables shaped like ``template`` with values taken from ``state_dict``.

    Args:
      template: ``{"params": ..., "batch_stats": ...}`` of ``jax.ShapeDtypeStruct`` (or arrays).
      state_dict: PyTorch names -> arrays (conv ``[O, I, kh, kw]``, linear ``[out, in]``).
      module_key: maps a Flax module path (without the collection and leaf name) to the
        PyTorch module prefix, e.g. ``("layer1_0", "conv1") -> "layer1.0.conv1"``.
      source: file name used in error messages.

    Raises:
      ValueError: naming missing, unexpected or mis-shaped tensors (the whole list).
    """
    used: set[str] = set()
    missing: list[str] = []
    wrong: list[str] = []

    def fill(path: tuple[Any, ...], leaf: Any) -> np.ndarray:
        names = tuple(p.key for p in path)
        key = f"{module_key(names[1:-1])}.{TORCH_LEAF_NAMES[names[-1]]}"
        if key not in state_dict:
            missing.append(key)
            return np.zeros(leaf.shape, np.float32)
        used.add(key)
        value = np.asarray(state_dict[key], dtype=np.float32)
        if value.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:  # linear [out, in] -> [in, out]
            value = value.T
        if value.shape != tuple(leaf.shape):
            wrong.append(f"{key}: file has {tuple(state_dict[key].shape)}, "
                         f"expected {tuple(leaf.shape)} (Flax layout)")
        return np.ascontiguousarray(value)

    variables = jax.tree_util.tree_map_with_path(fill, dict(template))
    unexpected = sorted(k for k in state_dict
                        if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {_shorten(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: {_shorten(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_shorten(wrong)}")
    if problems:
        raise ValueError(f"{source} does not match this architecture: " + "; ".join(problems))
    return variables


def _shorten(items: list[str], limit: int = 6) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
