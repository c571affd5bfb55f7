"""Core value types that flow between data, methods, metrics and evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import struct

#: A method's fitted or trained state: a nested ``dict`` of arrays (a pytree).
State = dict[str, Any]


@struct.dataclass
class Scores:
    """What every method's ``score`` returns.

    Attributes:
      image: ``[B]`` float32 image-level anomaly scores (higher = more anomalous).
      maps: ``[B, H, W]`` float32 pixel anomaly maps at the input resolution.
    """

    image: jax.Array
    maps: jax.Array


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch of images as read from disk or generated in memory.

    Attributes:
      images: ``[B, H, W, 3]`` float32 RGB in ``[0, 1]`` (grayscale is replicated to 3 channels).
      labels: ``[B]`` int32, 1 = defective, 0 = normal.
      masks: ``[B, H, W]`` uint8 in ``{0, 1}`` (all zeros for normal images).
      paths: ``B`` source paths (or synthetic names).
      defect_types: ``B`` defect type names (``"good"`` for normal images).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    paths: tuple[str, ...]
    defect_types: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])
