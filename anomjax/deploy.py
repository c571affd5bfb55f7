"""Load and run an exported scorer (``anomjax export RUN --out DIR``) from its folder alone.

This module needs only JAX, NumPy and safetensors (Pillow for :func:`prepare_image`'s
resize, imported when an image must be resized): it never imports a method's code, the
training engine or the run folder's Orbax checkpoint. An artefact folder holds::

    manifest.json        method, input size and dtype, the run's resize rule, threshold and
                         score normalisation, library versions, format version, file hashes
    scorer.jax_export    the serialized ``jax.export`` of the method's scoring function,
                         lowered for CPU, CUDA and TPU, with a symbolic batch dimension
    state.safetensors    the fitted state's arrays (a format that cannot run code), passed to
                         the program as arguments in the manifest's ``state`` order

The program maps ``(state arrays, images [B, h, w, 3])`` to ``(maps [B, h, w] float32,
image scores [B] float32)`` at the run's input size ``(h, w)`` (``crop`` if the run crops,
else ``image_size``). Its images are ``uint8`` when the run resizes 8-bit images (the
default ``resize_dtype``; the program divides by 255 as the run's reader does) and
``float32`` in ``[0, 1]`` when the run resizes floats. Resizing arbitrary sizes is done
here, on the host, by :func:`prepare_image`, which reproduces the run's rule
(:func:`anomjax.data.transforms.prepare`) exactly.

Normalised outputs (the same rule as ``anomjax predict``'s ``normalized_score``)::

    normalized = clip((x - image_threshold) / (max - min) + 0.5, 0, 1)

with ``(min, max) = (image_min, image_max)`` for image scores and ``(pixel_min,
pixel_max)`` for maps: the run's threshold maps to 0.5, and ``label = score >=
image_threshold``. All five numbers come from the run's ``threshold.json`` (chosen by
``anomjax test`` on the split it tested), never from the images being scored.

A file whose SHA-256 differs from the manifest's (changed or truncated) is refused, naming
it; so is an artefact whose ``format_version`` is newer than :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from anomjax import tiling

#: The artefact format this loader reads (and ``anomjax export`` writes).
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PROGRAM_FILE = "scorer.jax_export"
STATE_FILE = "state.safetensors"
#: The platforms every artefact is lowered for.
PLATFORMS = ("cpu", "cuda", "tpu")
THRESHOLD_KEYS = ("image_threshold", "image_min", "image_max", "pixel_min", "pixel_max")
_REQUIRED = ("format_version", "method", "input_size", "input_dtype", "image_size",
             "resize_dtype", "threshold", "state", "files")


class ArtefactError(ValueError):
    """An artefact folder is missing, corrupt, tampered with or too new for this loader."""


@dataclasses.dataclass(frozen=True)
class Scored:
    """What the exported scorer returns for ``B`` images of ``[h, w]`` pixels.

    Attributes:
      maps: ``[B, h, w]`` float32 raw anomaly maps.
      scores: ``[B]`` float32 raw image scores.
      normalized_maps: ``[B, h, w]`` float32 in ``[0, 1]`` (threshold -> 0.5).
      normalized_scores: ``[B]`` float32 in ``[0, 1]`` (threshold -> 0.5).
      labels: ``[B]`` int32, 1 where ``scores >= image_threshold``.
    """

    maps: np.ndarray
    scores: np.ndarray
    normalized_maps: np.ndarray
    normalized_scores: np.ndarray
    labels: np.ndarray


def normalize(values: Any, threshold: float, low: float, high: float) -> np.ndarray:
    """``clip((values - threshold) / (high - low) + 0.5, 0, 1)`` in float32 (any shape)."""
    scaled = (np.asarray(values, np.float32) - np.float32(threshold)) / (
        np.float32(high) - np.float32(low))
    return np.clip(scaled + np.float32(0.5), np.float32(0.0), np.float32(1.0))


def is_artefact(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding an exported scorer (its ``manifest.json``)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked manifest of an artefact folder, after verifying every file's SHA-256.

    Raises :class:`ArtefactError` naming the file for a missing or corrupt manifest, a
    format version newer than this loader's, or a missing, changed or truncated file.
    """
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{folder}: not an exported scorer (no {MANIFEST_FILE}); write "
                            "one with `anomjax export RUN --out DIR`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtefactError(f"{path}: cannot read the manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise ArtefactError(f"{path}: the manifest is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtefactError(f"{path}: no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise ArtefactError(f"{path}: the artefact has format version {version}, this "
                            f"loader reads up to version {FORMAT_VERSION}: it needs an anomjax "
                            f"that reads format version {version}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ArtefactError(f"{path}: the manifest lacks {', '.join(missing)}")
    files = manifest["files"]
    if not isinstance(files, dict) or set(files) != {PROGRAM_FILE, STATE_FILE}:
        raise ArtefactError(f"{path}: 'files' must give the SHA-256 of {PROGRAM_FILE} and "
                            f"{STATE_FILE}")
    for name, expected in files.items():
        file = Path(folder) / name
        if not file.is_file():
            raise ArtefactError(f"{file}: missing (the manifest lists it)")
        if sha256_file(file) != expected:
            raise ArtefactError(f"{file}: its SHA-256 differs from the manifest's (the file "
                                "was changed or truncated); export the run again")
    threshold = manifest["threshold"]
    if not isinstance(threshold, dict) or not all(
            isinstance(threshold.get(k), int | float) and np.isfinite(threshold[k])
            for k in THRESHOLD_KEYS):
        raise ArtefactError(f"{path}: 'threshold' must hold finite {', '.join(THRESHOLD_KEYS)}")
    return manifest


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    return (int(value), int(value)) if isinstance(value, int | np.integer) else (
        int(value[0]), int(value[1]))


def prepare_image(image: np.ndarray, image_size: Any, crop: Any = None,
                  resize_dtype: str = "uint8") -> np.ndarray:
    """Resize (Pillow's antialiased bilinear) then centre-crop one image ``[H, W, 3]`` as
    the run's reader does (:func:`anomjax.data.transforms.prepare`), returning what the
    exported program takes: ``uint8`` for a ``uint8`` source under ``resize_dtype="uint8"``
    (the run's values are exactly this / 255), else ``float32`` in ``[0, 1]``."""
    if resize_dtype not in ("uint8", "float32"):
        raise ValueError(f"resize_dtype must be 'uint8' or 'float32', got {resize_dtype!r}")
    if resize_dtype == "float32":
        image = _to_float(image)
    size = _pair(image_size)
    if size is not None and image.shape[:2] != size:
        from PIL import Image

        h, w = size
        if image.dtype == np.uint8:
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        else:
            image = np.stack([np.asarray(
                Image.fromarray(np.ascontiguousarray(image[:, :, c], np.float32), "F")
                .resize((w, h), Image.Resampling.BILINEAR)) for c in range(image.shape[2])], 2)
    crop_hw = _pair(crop)
    if crop_hw is not None:
        ch, cw = crop_hw
        h, w = image.shape[:2]
        if ch > h or cw > w:
            raise ValueError(f"crop {ch}x{cw} is larger than the image {h}x{w}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        image = image[top:top + ch, left:left + cw]
    return image if image.dtype == np.uint8 else _to_float(image)


def _to_float(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


class Scorer:
    """An exported scorer, loaded: call :meth:`score` on images at :attr:`input_size`.

    Attributes:
      manifest: the checked manifest.
      input_size: ``(h, w)`` the program takes.
      input_dtype: ``"uint8"`` or ``"float32"``.
      threshold: the threshold record (``image_threshold``, ``image_min``, ...).
      exported: the deserialized :class:`jax.export.Exported`.
    """

    def __init__(self, folder: str | os.PathLike, threshold: float | None = None):
        from safetensors.numpy import load_file

        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        self.input_size = _pair(self.manifest["input_size"])
        self.input_dtype = self.manifest["input_dtype"]
        self.threshold = {k: float(self.manifest["threshold"][k]) for k in THRESHOLD_KEYS}
        if threshold is not None:
            self.threshold["image_threshold"] = float(threshold)
        program = self.folder / PROGRAM_FILE
        try:
            self.exported = jax.export.deserialize(bytearray(program.read_bytes()))
        except Exception as err:  # noqa: BLE001  (a corrupt or incompatible program)
            raise ArtefactError(f"{program}: cannot deserialize the exported program "
                                f"({type(err).__name__}: {err})") from None
        state_file = self.folder / STATE_FILE
        try:
            arrays = load_file(str(state_file))
        except Exception as err:  # noqa: BLE001
            raise ArtefactError(f"{state_file}: cannot read the state ({err})") from None
        names = [entry["name"] for entry in self.manifest["state"]]
        if sorted(names) != sorted(arrays):
            raise ArtefactError(f"{state_file}: its arrays differ from the manifest's state")
        self.state = [jax.device_put(arrays[n]) for n in names]
        self._call = jax.jit(self.exported.call)

    @property
    def method(self) -> str:
        """The method's registry name."""
        return self.manifest["method"]

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images [B, h, w, 3]`` (:attr:`input_dtype`) -> ``(maps [B, h, w], scores [B])``
        float32, the method's raw outputs."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"{self.folder}: expects images [B, {self.input_size[0]}, "
                             f"{self.input_size[1]}, 3], got {list(images.shape)} (resize with "
                             "prepare_image, or score a large image with score_tiled)")
        if images.dtype != np.dtype(self.input_dtype):
            if self.input_dtype == "float32" and images.dtype == np.uint8:
                images = _to_float(images)
            else:
                raise ValueError(f"{self.folder}: expects {self.input_dtype} images, got "
                                 f"{images.dtype}")
        maps, scores = self._call(self.state, images)
        return np.asarray(maps), np.asarray(scores)

    def finish(self, maps: np.ndarray, scores: np.ndarray) -> Scored:
        """Raw ``maps [B, h, w]`` and ``scores [B]`` -> :class:`Scored` (normalised, labels)."""
        t = self.threshold
        return Scored(maps=maps, scores=scores,
                      normalized_maps=normalize(maps, t["image_threshold"], t["pixel_min"],
                                                t["pixel_max"]),
                      normalized_scores=normalize(scores, t["image_threshold"], t["image_min"],
                                                  t["image_max"]),
                      labels=(scores >= np.float32(t["image_threshold"])).astype(np.int32))

    def score(self, images: np.ndarray) -> Scored:
        """Score ``images [B, h, w, 3]`` at the input size: raw and normalised maps and
        scores, and labels."""
        return self.finish(*self.raw(images))

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One decoded image ``[H, W, 3]`` of any size -> the program's input ``[h, w, 3]``,
        by the run's resize rule (:func:`prepare_image`)."""
        prepared = prepare_image(image, self.manifest["image_size"], self.manifest.get("crop"),
                                 self.manifest["resize_dtype"])
        if self.input_dtype == "uint8" and prepared.dtype != np.uint8:
            raise ValueError(f"{self.folder}: takes 8-bit images (the run resizes 8-bit "
                             "images); this one has more bits per channel")
        return prepared

    def score_tiled(self, image: np.ndarray, stride: int | Sequence[int] | None = None,
                    batch_size: int = 16) -> Scored:
        """Score one large image ``[H, W, 3]`` (not resized) by overlapping tiles of the
        input size (:func:`anomjax.tiling.score_tiled`); returns a batch of one with the
        blended map ``[1, H, W]`` and its maximum as the image score."""
        if self.input_dtype == "uint8" and image.dtype != np.uint8:
            raise ValueError(f"{self.folder}: takes 8-bit images")
        blended, top = tiling.score_tiled(image, lambda tiles: self.raw(tiles)[0],
                                          self.input_size, stride, batch_size)
        return self.finish(blended[None], np.asarray([top], np.float32))


def load(folder: str | os.PathLike, threshold: float | None = None) -> Scorer:
    """Load the exported scorer in ``folder`` (every file checked against the manifest).

    ``threshold`` overrides the image threshold recorded at export (as ``anomjax predict
    --threshold`` does).
    """
    return Scorer(folder, threshold)
