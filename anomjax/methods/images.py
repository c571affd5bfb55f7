"""Input checks of the methods: every method's RGB check, and the square-size checks of
those that reconstruct or generate whole images."""

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


def check_images(method: str, images: Any, *, multiple: int = 1,
                 power_of_two: bool = False) -> None:
    """A clear error unless ``images`` is float ``[B, S, S, 3]`` with ``S`` a multiple of
    ``multiple`` (and a power of two >= 8 with ``power_of_two``)."""
    check_rgb(method, images)
    shape = images.shape
    size = shape[1]
    if shape[2] != size:
        raise ValueError(f"{method}: images must be square (the network's size is fixed by "
                         f"the image size), got {shape[1]} x {shape[2]}; use --image-size")
    if size % multiple:
        raise ValueError(f"{method}: the image size must be a multiple of {multiple}, got "
                         f"{size}")
    if power_of_two and (size < 8 or size & (size - 1)):
        raise ValueError(f"{method}: the image size must be a power of two >= 8 (DCGAN "
                         f"networks), got {size}")


def to_signed(images: jnp.ndarray) -> jnp.ndarray:
    """``[0, 1]`` images to the ``[-1, 1]`` range of a ``tanh`` generator."""
    return images.astype(jnp.float32) * 2.0 - 1.0


def check_trained_size(method: str, images: Any, trained: int) -> None:
    """A clear error when ``images`` are not of the size the network was trained at."""
    if tuple(images.shape[1:3]) != (trained, trained):
        raise ValueError(f"{method}: this model was trained on {trained} x {trained} images, "
                         f"got {images.shape[1]} x {images.shape[2]}; score at the training "
                         f"image size (--image-size {trained})")
