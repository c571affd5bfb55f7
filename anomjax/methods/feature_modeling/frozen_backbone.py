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

from anomjax.backbones import backbone_names, load_backbone
from anomjax.methods.images import check_rgb
from anomjax.nn.teacher import check_taps

__all__ = ["BACKBONES", "check_taps", "host_images", "load_variables",
           "same_size_images"]

BACKBONES = tuple(backbone_names())
"""Valid ``backbone`` values of the feature-modeling methods."""


def load_variables(name: str, weights: str | None, key: jax.Array) -> dict[str, Any]:
    """Pretrained ``variables`` of backbone ``name`` (bundled, or the user's ``weights`` file)."""
    _, variables = load_backbone(name, weights, pretrained=True, key=key)
    return variables


def host_images(images: Any, paths: Sequence[str]) -> np.ndarray:
    """Host images ``[B, H, W, 3]`` float32 in ``[0, 1]``, or a ``ValueError`` naming the batch
    (:func:`anomjax.methods.images.check_rgb`) or its files holding NaN or infinite values."""
    images = np.asarray(images)
    check_rgb(f"batch starting at {paths[0]}" if len(paths) else "batch", images)
    finite = np.isfinite(images).all(axis=(1, 2, 3))
    if not finite.all():
        bad = [p for p, ok in zip(paths, finite, strict=False) if not ok]
        raise ValueError(f"images hold NaN or infinite values: {', '.join(bad) or 'batch'}")
    return images.astype(np.float32, copy=False)




def same_size_images(batches: Iterable[Any]) -> Iterator[np.ndarray]:
    """Each batch's checked images (:func:`host_images`), or a ``ValueError`` naming the first
    file of a batch whose image size differs from the first batch's."""
    shape = None
    for batch in batches:
        images = host_images(batch.images, batch.paths)
        if shape is None:
            shape = images.shape[1:]
        elif images.shape[1:] != shape:
            raise ValueError(f"training images must share one size: {batch.paths[0]} is "
                             f"{images.shape[1:3]}, earlier images were {shape[:2]}")
        yield images
