"""Seeded random state dicts in PyTorch layout, for exactness tests without shipped weights.

NumPy only (no JAX, no torch), so the fixture script run under a torch environment and the
tests run without torch draw identical weights from the same names, shapes and seed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def seeded_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """float32 tensors for ``shapes`` (PyTorch names and layouts), drawn in sorted-name order.

    Weights of convolutions/linear layers ~ N(0, 1 / fan_in); batch-norm scales and running
    variances ~ U(0.5, 1.5); biases and running means ~ N(0, 0.1), so that every batch norm
    does something non-trivial.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith(".weight") and len(shape) >= 2:
            std = np.float32(np.sqrt(1.0 / np.prod(shape[1:])))
            value = rng.standard_normal(shape, dtype=np.float32) * std
        elif name.endswith((".running_var", ".weight")):
            value = np.float32(0.5) + rng.random(shape, dtype=np.float32)
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        out[name] = value
    return out
