"""Small random test sets for the metric tests: maps with blob-shaped defect masks."""

from __future__ import annotations

import numpy as np
import pytest


def blob_test_set(seed: int, n: int = 6, size: int = 24, levels: int | None = None):
    """``(image_scores [n], labels [n], maps [n, size, size], masks [n, size, size])``.

    Every other image is defective with one or two elliptic blobs; maps are noise plus a
    bump on the blobs. ``levels`` quantises the maps to that many values, creating ties.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(1, n, 2):
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(3, size - 3, 2)
            ry, rx = rng.uniform(1.5, size / 5, 2)
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    maps = rng.normal(size=(n, size, size)).astype(np.float32) + 1.5 * masks
    if levels is not None:
        lo, hi = maps.min(), maps.max()
        maps = np.round((maps - lo) / (hi - lo) * (levels - 1)).astype(np.float32)
    labels = (masks.reshape(n, -1).max(axis=1) > 0).astype(np.int32)
    return maps.max(axis=(1, 2)), labels, maps, masks


@pytest.fixture
def blobs():
    """A 6-image blob test set with continuous scores."""
    return blob_test_set(seed=0)


@pytest.fixture
def tied_blobs():
    """A 6-image blob test set whose scores take only 12 values (many ties)."""
    return blob_test_set(seed=1, levels=12)


@pytest.fixture
def make_blobs():
    """The :func:`blob_test_set` factory, for tests that need other sizes or seeds."""
    return blob_test_set
