"""Reading images and masks from disk with Pillow.

Any format Pillow decodes (png, jpg, bmp, tif, ...) in any mode: grayscale and palette
images become RGB, 16-bit and float images keep their precision. Unreadable or truncated
files raise :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from anomjax.data.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image file extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes a :class:`DataError`."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: {what} is too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"{path}: cannot read {what}, the file is unreadable or truncated "
                        f"({type(err).__name__}: {err})") from None
    return img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image from its header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot read image header ({type(err).__name__}: {err})") from None
    return height, width


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image to RGB ``[H, W, 3]``.

    Returns ``uint8`` for 8-bit sources (grayscale, palette, RGBA, CMYK converted to RGB) and
    ``float32`` in ``[0, 1]`` for 16-bit or 32-bit sources (grayscale replicated to 3
    channels), so that no precision is lost before resizing.
    """
    img = _open(path, "image")
    if img.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img).astype(np.float32)
        if img.mode != "F":
            arr = arr / 65535.0
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise DataError(f"{path}: {img.mode!r} image has values outside the 16-bit range "
                            "(or, for float images, outside [0, 1])")
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Decode a ground-truth mask to ``[H, W]`` ``uint8`` in ``{0, 1}`` (any value > 0 is defect).

    Colour masks count a pixel as defect when any channel is > 0; palette masks are judged
    by their palette colours; an alpha channel is ignored.
    """
    img = _open(path, "mask")
    if img.mode == "P":
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 3:
        if img.mode in ("LA", "RGBA", "PA"):
            arr = arr[:, :, :-1]
        arr = arr.max(axis=2)
    return (arr > 0).astype(np.uint8)
