"""The frozen pretrained backbone shared by the feature-modeling methods.

A fitted state stores the backbone's ``variables`` (so a saved run scores with exactly the
weights it was fitted with); the architecture comes from
:func:`anomjax.backbones.get_backbone`, shared per process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from anomjax.backbones import backbone_names, get_backbone, load_backbone

BACKBONES = tuple(backbone_names())
"""Valid ``backbone`` values of the feature-modeling methods."""


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


def same_size_images(batches: Iterable[Any]) -> Iterator[np.ndarray]:
    """Each batch's checked images (:func:`check_images`), or a ``ValueError`` naming the first
    file of a batch whose image size differs from the first batch's."""
    shape = None
    for batch in batches:
        images = check_images(batch.images, batch.paths)
        if shape is None:
            shape = images.shape[1:]
        elif images.shape[1:] != shape:
            raise ValueError(f"training images must share one size: {batch.paths[0]} is "
                             f"{images.shape[1:3]}, earlier images were {shape[:2]}")
        yield images


def check_taps(method: str, backbone: str, taps: Sequence[str], count: int | None = None,
               field: str = "taps") -> tuple[str, ...]:
    """``taps`` if they exist on ``backbone`` and run fine to coarse, else a ``ValueError``."""
    taps = tuple(taps)
    available = get_backbone(backbone).taps
    unknown = [t for t in taps if t not in available]
    if unknown:
        raise ValueError(f"{method}: hyper-parameter {field}={taps!r}: {backbone} has no tap(s) "
                         f"{unknown}; available: {', '.join(available)}")
    if count is not None and len(taps) != count:
        raise ValueError(f"{method}: hyper-parameter {field}={taps!r} must name {count} taps")
    strides = [available[t].stride for t in taps]
    if strides != sorted(strides) or len(set(taps)) != len(taps):
        raise ValueError(f"{method}: hyper-parameter {field}={taps!r} must be distinct taps "
                         f"ordered fine to coarse (shallow to deep); their strides are {strides}")
    return taps
