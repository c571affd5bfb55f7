"""Helpers for the data tests: tiny image folders written into ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_image(path: Path, size: tuple[int, int] = (24, 32), value: int | None = None,
                 seed: int = 0, mode: str = "RGB") -> Path:
    """Write a small random (or constant) image of ``size`` = (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = size + ((3,) if mode == "RGB" else ())
    arr = (np.full(shape, value, np.uint8) if value is not None
           else rng.integers(0, 256, shape, dtype=np.uint8))
    Image.fromarray(arr, mode).save(path)
    return path


def _write_mask(path: Path, size: tuple[int, int] = (24, 32), box: tuple[int, int, int, int]
                | None = (4, 8, 10, 16)) -> Path:
    """Write a 0/255 mask with ``box`` = (top, bottom, left, right) set (or empty if None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(size, np.uint8)
    if box is not None:
        arr[box[0]:box[1], box[2]:box[3]] = 255
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    return _write_image


@pytest.fixture
def write_mask() -> Callable[..., Path]:
    return _write_mask


@pytest.fixture
def mvtec_folder(tmp_path: Path) -> Path:
    """A tiny MVTec AD category: 3 train, 2 good + 2 'crack' test images, masks."""
    root = tmp_path / "widget"
    for i in range(3):
        _write_image(root / "train" / "good" / f"{i:03d}.png", seed=i)
    for i in range(2):
        _write_image(root / "test" / "good" / f"{i:03d}.png", seed=10 + i)
        _write_image(root / "test" / "crack" / f"{i:03d}.png", seed=20 + i)
        _write_mask(root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root
