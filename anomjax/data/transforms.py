"""Resize, centre-crop and normalisation of images and masks.

Images are resized with Pillow's antialiased bilinear filter (the filter torchvision's
``Resize`` applies to PIL images, so sizes and pixel values match the papers' pipelines);
masks are resized by nearest neighbour so they stay binary, sampling pixel centres (PIL's
``NEAREST``, the authors' pipelines; PyTorch's ``nearest``, which anomalib uses for masks,
takes ``floor(i * in / out)``, half a source pixel off the image's resampling grid).

``resize_dtype`` says what is resized. ``"uint8"`` (the default) resizes the decoded 8-bit
image and rounds the result to 8 bits, as the authors' PIL pipelines do (``Resize`` before
``ToTensor``). ``"float32"`` resizes the image after its conversion to ``[0, 1]`` floats,
without rounding, as torchvision's ``Resize`` on float tensors does (anomalib 2.x). The two
differ by about half a grey level per pixel (at most one: Pillow's 8-bit filter is fixed
point), but methods with near-singular statistics feel
it: PaDiM with all 176 Lite0 channels on mvtec3d_tire moves by 2 points of image AUROC and 4
of pixel AUROC between them (``experiments/vs_anomalib_tire.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

Size = int | tuple[int, int]

#: What :func:`prepare` resizes: the 8-bit image (rounded after resizing) or its floats.
RESIZE_DTYPES = ("uint8", "float32")

#: ``name -> (offset, scale)``, applied per channel as ``(x - offset) / scale`` to [0, 1] images.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # torchvision ImageNet statistics (ResNet / WideResNet weights).
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # EfficientNet-Lite: (255 x - 127) / 128.
    "lite": ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3),
    # [-1, 1], as used by many autoencoders.
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def as_hw(size: Size) -> tuple[int, int]:
    """``N`` -> ``(N, N)``; ``(H, W)`` is checked and returned."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in hw):
        raise ValueError(f"a size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
    """Antialiased bilinear resize of ``[H, W, 3]`` to ``[*size, 3]``, keeping the dtype.

    ``uint8`` images are resized as Pillow RGB images; float images channel by channel in
    Pillow's 32-bit float mode, without rounding.
    """
    h, w = as_hw(size)
    if image.shape[:2] == (h, w):
        return image
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32), "F")
                   .resize((w, h), Image.Resampling.BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of a ``[H, W]`` ``uint8`` mask to ``size`` (stays binary)."""
    h, w = as_hw(size)
    if mask.shape == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))


def center_crop(array: np.ndarray, size: Size) -> np.ndarray:
    """Central ``size`` window of ``[H, W, ...]`` (offsets rounded like torchvision)."""
    ch, cw = as_hw(size)
    h, w = array.shape[:2]
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} is larger than the image {h}x{w}")
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return array[top:top + ch, left:left + cw]


def to_float(image: np.ndarray) -> np.ndarray:
    """``uint8`` ``[0, 255]`` or float ``[0, 1]`` -> ``float32`` in ``[0, 1]``."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def normalize(images: Any, preset: str = "imagenet") -> Any:
    """Apply a normalisation preset to ``[..., 3]`` images in ``[0, 1]`` (numpy or jax arrays).

    Pure arithmetic, so it works inside ``jax.jit``.
    """
    if preset not in NORMALIZATION_PRESETS:
        raise ValueError(f"unknown normalisation preset {preset!r}; "
                         f"known: {', '.join(NORMALIZATION_PRESETS)}")
    offset, scale = NORMALIZATION_PRESETS[preset]
    return (images - np.asarray(offset, np.float32)) / np.asarray(scale, np.float32)


def denormalize(images: Any, preset: str = "imagenet") -> Any:
    """Inverse of :func:`normalize`."""
    if preset not in NORMALIZATION_PRESETS:
        raise ValueError(f"unknown normalisation preset {preset!r}; "
                         f"known: {', '.join(NORMALIZATION_PRESETS)}")
    offset, scale = NORMALIZATION_PRESETS[preset]
    return images * np.asarray(scale, np.float32) + np.asarray(offset, np.float32)


def check_resize_dtype(resize_dtype: str) -> str:
    """``resize_dtype`` if it is one of :data:`RESIZE_DTYPES`, else a ``ValueError``."""
    if resize_dtype not in RESIZE_DTYPES:
        raise ValueError(f"resize_dtype must be one of {RESIZE_DTYPES}, got {resize_dtype!r}")
    return resize_dtype


def prepare(image: np.ndarray, mask: np.ndarray | None, image_size: Size | None,
            crop: Size | None, resize_dtype: str = "uint8", *, as_float: bool = True
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize (if ``image_size``) then centre-crop (if ``crop``) an image and its mask.

    ``resize_dtype``: ``"uint8"`` resizes the 8-bit image, ``"float32"`` its ``[0, 1]``
    floats (see the module docstring). Returns ``float32`` ``[H, W, 3]`` in ``[0, 1]`` and
    the ``uint8`` mask (or ``None``); ``as_float=False`` leaves out the final conversion
    (:func:`to_float` of the result is the same image).
    """
    if check_resize_dtype(resize_dtype) == "float32":
        image = to_float(image)
    if image_size is not None:
        image = resize_image(image, image_size)
        mask = None if mask is None else resize_mask(mask, image_size)
    if crop is not None:
        image = center_crop(image, crop)
        mask = None if mask is None else center_crop(mask, crop)
    return (to_float(image) if as_float else image), mask
