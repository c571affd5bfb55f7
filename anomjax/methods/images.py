"""Input checks of the methods: every method's RGB check, and the size checks of those whose
networks need sides of some multiple, a least size or square images."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def check_rgb(method: str, images: Any) -> None:
    """A clear error for anything but float ``[B, H, W, 3]`` images (every method's input)."""
    shape, dtype = getattr(images, "shape", None), getattr(images, "dtype", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{method}: images must be [B, H, W, 3] RGB, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{method}: images must be float in [0, 1], got dtype {dtype} "
                         "(divide uint8 images by 255)")


def check_images(method: str, images: Any, *, multiple: int = 1, min_size: int = 1,
                 square: bool = False, power_of_two: bool = False, why: str = "") -> None:
    """A clear error unless ``images`` is float ``[B, H, W, 3]`` with sides that are multiples
    of ``multiple`` (for the reason ``why``, if given) and at least ``min_size``; with
    ``square``, ``H == W``; with ``power_of_two``, square with a side that is a power of two
    >= 8."""
    check_rgb(method, images)
    h, w = images.shape[1:3]
    if (square or power_of_two) and h != w:
        raise ValueError(f"{method}: images must be square (the network's size is fixed by "
                         f"the image size), got {h} x {w}; use --image-size")
    if h % multiple or w % multiple or min(h, w) < min_size:
        least = f" and at least {min_size} pixels" if min_size > 1 else ""
        reason = f" ({why})" if why else ""
        raise ValueError(f"{method}: image sides must be multiples of {multiple}{reason}{least}, "
                         f"got {h} x {w} (choose another --image-size)")
    if power_of_two and (h < 8 or h & (h - 1)):
        raise ValueError(f"{method}: the image size must be a power of two >= 8 (DCGAN "
                         f"networks), got {h}")


def to_signed(images: jnp.ndarray) -> jnp.ndarray:
    """``[0, 1]`` images to the ``[-1, 1]`` range of a ``tanh`` generator."""
    return images.astype(jnp.float32) * 2.0 - 1.0


def check_trained_size(method: str, images: Any, trained: int) -> None:
    """A clear error when ``images`` are not of the size the network was trained at."""
    if tuple(images.shape[1:3]) != (trained, trained):
        raise ValueError(f"{method}: this model was trained on {trained} x {trained} images, "
                         f"got {images.shape[1]} x {images.shape[2]}; score at the training "
                         f"image size (--image-size {trained})")
