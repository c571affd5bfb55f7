"""Write a run's scoring function as a self-contained, deployable folder (``jax.export``).

:func:`write_artefact` serializes ``method.score`` with the run's state passed as arguments
(not baked into the program), a symbolic batch dimension, the division of 8-bit images by
255 inside (exactly as the run's reader), lowered for CPU, CUDA and TPU at once (lowering
needs no device); the state's arrays go to ``state.safetensors`` and everything a loader
must know to ``manifest.json``.
The folder's layout and the loader are described in :mod:`anomjax.deploy`. The run API's
:func:`anomjax.runs.export` checks the run folder and calls this.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.deploy import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    PLATFORMS,
    PROGRAM_FILE,
    STATE_FILE,
    THRESHOLD_KEYS,
    sha256_file,
)
from anomjax.run_folder import atomic_writer, write_json
from anomjax.types import State

NORMALIZATION = ("normalized = clip((x - image_threshold) / (max - min) + 0.5, 0, 1); "
                 "image scores: (min, max) = (image_min, image_max); maps: (pixel_min, "
                 "pixel_max); label = score >= image_threshold")


def input_size(config: dict[str, Any]) -> tuple[int, int]:
    """``(h, w)`` the run's scorer takes: its ``crop`` if it crops, else ``image_size``."""
    size = config.get("crop") or config["image_size"]
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def input_dtype(config: dict[str, Any]) -> str:
    """``"uint8"`` when the run resizes 8-bit images (its inputs are exactly uint8 / 255),
    ``"float32"`` when it resizes floats."""
    return "uint8" if config.get("resize_dtype", "uint8") == "uint8" else "float32"


def flatten_state(state: State) -> tuple[list[str], list[np.ndarray], Any]:
    """``(names, host arrays, treedef)`` of the state's leaves, in flattening order."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [jax.tree_util.keystr(path) for path, _ in leaves]
    arrays = [np.asarray(jax.device_get(leaf), order="C") for _, leaf in leaves]  # 0-d kept
    return names, arrays, treedef


def export_scorer(method: Any, treedef: Any, arrays: list[np.ndarray],
                  size: tuple[int, int], dtype: str,
                  platforms: tuple[str, ...] = PLATFORMS) -> jax.export.Exported:
    """``jax.export`` of ``(state arrays, images [b, h, w, 3] dtype) -> (maps [b, h, w],
    scores [b])`` (float32), with ``b`` symbolic, lowered for ``platforms``."""

    # uint8 -> [0, 1] by a table of the host's ``np.float32(v) / 255`` (what the run's
    # reader computes): XLA may compile ``x / 255`` as a multiplication by 1/255, which
    # rounds differently in a few values; a gather is exact.
    table = np.arange(256, dtype=np.float32) / np.float32(255.0)

    def score(state_arrays: list[jax.Array], images: jax.Array) -> tuple[jax.Array, jax.Array]:
        state = jax.tree_util.tree_unflatten(treedef, state_arrays)
        x = jnp.asarray(table)[images.astype(jnp.int32)] if images.dtype == jnp.uint8 else images
        scores = method.score(state, x)
        return scores.maps.astype(jnp.float32), scores.image.astype(jnp.float32)

    (batch,) = jax.export.symbolic_shape("b")
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
    images = jax.ShapeDtypeStruct((batch, *size, 3), jnp.dtype(dtype))
    return jax.export.export(jax.jit(score), platforms=platforms)(specs, images)


def versions() -> dict[str, str]:
    """Versions of the libraries that wrote an artefact."""
    out = {}
    for name in ("anomjax", "jax", "jaxlib", "numpy", "safetensors", "flax"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def write_artefact(method: Any, state: State, config: dict[str, Any],
                   threshold: dict[str, Any], out: str | os.PathLike,
                   platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
    """Export ``method``'s scorer with ``state`` into the folder ``out`` (which must exist);
    returns the manifest.

    ``config`` is the run's ``config.json`` (image settings, ``run_id``), ``threshold`` its
    threshold record (:data:`~anomjax.deploy.THRESHOLD_KEYS`). Every file is written
    atomically, the manifest last, so a folder without one is not an artefact.
    """
    from safetensors.numpy import save

    out = Path(out)
    names, arrays, treedef = flatten_state(state)
    size, dtype = input_size(config), input_dtype(config)
    exported = export_scorer(method, treedef, arrays, size, dtype, platforms)
    with atomic_writer(out / PROGRAM_FILE, "wb") as f:
        f.write(exported.serialize())
    with atomic_writer(out / STATE_FILE, "wb") as f:
        f.write(save(dict(zip(names, arrays, strict=True))))
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": method.name,
        "params": config.get("params"),
        "run_id": config.get("run_id"),
        "config_sha256": config.get("config_sha256"),
        "image_size": config["image_size"],
        "crop": config.get("crop"),
        "resize_dtype": config.get("resize_dtype", "uint8"),
        "input_size": list(size),
        "input_dtype": dtype,
        "platforms": list(exported.platforms),
        "outputs": {"maps": "[b, h, w] float32", "scores": "[b] float32"},
        "threshold": {k: float(threshold[k]) for k in THRESHOLD_KEYS}
        | {"source": threshold.get("source")},
        "normalization": NORMALIZATION,
        "versions": versions(),
        "state": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
                  for n, a in zip(names, arrays, strict=True)],
        "files": {name: sha256_file(out / name) for name in (PROGRAM_FILE, STATE_FILE)},
    }
    write_json(out / MANIFEST_FILE, manifest)
    return manifest
