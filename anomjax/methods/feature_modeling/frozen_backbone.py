"""The frozen pretrained backbone shared by the feature-modeling methods.

A fitted state stores the backbone's ``variables`` (so a saved run scores with exactly the
weights it was fitted with); the architecture comes from
:func:`anomjax.backbones.get_backbone`, shared per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from anomjax.backbones import load_backbone


def load_variables(name: str, weights: str | None, key: jax.Array) -> dict[str, Any]:
    """Pretrained ``variables`` of backbone ``name`` (bundled, or the user's ``weights`` file)."""
    _, variables = load_backbone(name, weights, pretrained=True, key=key)
    return variables


def check_images(images: Any, paths: Sequence[str]) -> np.ndarray:
    """Host images ``[B, H, W, 3]`` in ``[0, 1]``, or a ``ValueError`` naming the batch."""
    images = np.asarray(images)
    where = f" (batch starting at {paths[0]})" if len(paths) else ""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}{where}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be float in [0, 1], got {images.dtype}{where}")
    if not np.isfinite(images).all():
        bad = [p for p, ok in zip(paths, np.isfinite(images).all(axis=(1, 2, 3)), strict=False)
               if not ok]
        raise ValueError(f"images hold NaN or infinite values: {', '.join(bad) or where}")
    return images.astype(np.float32, copy=False)
