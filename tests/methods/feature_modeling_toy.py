"""Tiny in-memory striped images with square defects, for the feature-modeling tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from anomjax.types import Batch


def toy_images(n: int, *, size: int = 64, seed: int = 0, defective: bool = False,
               subtle: bool = False) -> Batch:
    """``n`` striped images ``[n, size, size, 3]``; defective ones carry a reddish square, or
    with ``subtle`` a square of the same colours whose stripes run at another period and
    angle (a texture defect: no colour or brightness cue)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        stripes = 0.5 + 0.25 * np.sin(2 * np.pi * (xx + 0.3 * yy) / 8.0 + phase * 0.1)
        image = stripes[..., None] * np.array([0.9, 0.85, 0.8])
        image = image + rng.normal(0, 0.02, image.shape)
        if defective:
            side = size // 4
            top, left = rng.integers(side // 2, size - side - side // 2, size=2)
            if subtle:
                other = 0.5 + 0.25 * np.sin(2 * np.pi * (yy - 0.3 * xx) / 5.0)
                patch = other[..., None] * np.array([0.9, 0.85, 0.8])
                patch = patch + rng.normal(0, 0.02, patch.shape)
                image[top:top + side, left:left + side] = patch[top:top + side,
                                                                left:left + side]
            else:
                image[top:top + side, left:left + side] = (0.85, 0.2, 0.15)
            masks[i, top:top + side, left:left + side] = 1
        images[i] = np.clip(image, 0.0, 1.0)
    label = int(defective)
    return Batch(images=images, labels=np.full(n, label, np.int32), masks=masks,
                 paths=tuple(f"toy_{'bad' if defective else 'good'}_{seed}_{i}.png"
                             for i in range(n)),
                 defect_types=("square" if defective else "good",) * n)


def batches_of(batch: Batch, batch_size: int) -> list[Batch]:
    """Split ``batch`` into consecutive batches of ``batch_size`` images."""
    out = []
    for start in range(0, len(batch), batch_size):
        part = slice(start, start + batch_size)
        out.append(Batch(images=batch.images[part], labels=batch.labels[part],
                         masks=batch.masks[part], paths=batch.paths[part],
                         defect_types=batch.defect_types[part]))
    return out


def toy_test_set(size: int = 64, subtle: bool = False) -> Batch:
    """Four normal then four defective images (texture defects with ``subtle``)."""
    good = toy_images(4, size=size, seed=100)
    bad = toy_images(4, size=size, seed=200, defective=True, subtle=subtle)
    return Batch(images=np.concatenate([good.images, bad.images]),
                 labels=np.concatenate([good.labels, bad.labels]),
                 masks=np.concatenate([good.masks, bad.masks]),
                 paths=good.paths + bad.paths, defect_types=good.defect_types + bad.defect_types)


def score_toy_test_set(method: Any, state: Any, subtle: bool = False
                       ) -> tuple[Batch, np.ndarray, np.ndarray]:
    """:func:`toy_test_set`, and ``method``'s maps ``[8, 64, 64]`` (shape checked) and image
    scores ``[8]`` of it."""
    test = toy_test_set(subtle=subtle)
    scores = method.score(state, test.images)
    assert scores.maps.shape == (len(test), 64, 64)
    return test, np.asarray(scores.maps), np.asarray(scores.image)
