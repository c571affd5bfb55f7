"""Features of a frozen network, computed once per training image instead of at every step.

A method whose loss starts from features that depend only on frozen weights and the image
(STPM's pretrained teacher, for instance) overrides the hook
:meth:`anomjax.methods.protocol.TrainedMethod.frozen_features` (a jittable pytree of
``[B, ...]`` arrays) and accepts them as ``loss(params, state, images, key, frozen=...)``.
Before the first step :func:`build_frozen_cache` runs ``frozen_features`` once over every
training image (in dataset order, on this process's first device) and keeps the result in
host memory; each step then looks its images up by path and hands their features to the
loss, which skips the frozen forward pass. The result is the same training up to float
rounding (the features come from another compiled program). Only a method whose
``frozen_features`` really is a function of the image alone may declare it: a loss that
augments the images with the step's key before the frozen network cannot use a cache.
Under several processes each one caches every training image, since its shard of each
epoch's shuffle changes.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from anomjax.types import State


class FrozenCache:
    """Per-image frozen features held on the host, looked up by image path.

    Attributes:
      rows: ``{path: row}`` of every training image.
      features: the pytree of ``frozen_features``, each leaf ``[N, ...]`` numpy, row order.
    """

    def __init__(self, rows: dict[str, int], features: Any):
        self.rows, self.features = rows, features

    @property
    def nbytes(self) -> int:
        """Host memory the cached features take."""
        return sum(leaf.nbytes for leaf in jax.tree.leaves(self.features))

    def lookup(self, paths: Sequence[str]) -> Any:
        """The features of the images ``paths`` (leaves ``[len(paths), ...]``)."""
        try:
            rows = np.fromiter((self.rows[p] for p in paths), np.int64, len(paths))
        except KeyError as error:
            raise KeyError(f"image {error.args[0]!r} is not one of the training images whose "
                           "frozen features were cached") from None
        return jax.tree.map(lambda leaf: leaf[rows], self.features)


def build_frozen_cache(method: Any, state: State, split: Any, batch_size: int, *,
                       limit_mb: float, num_workers: int,
                       disable: bool = True) -> FrozenCache | None:
    """``method.frozen_features`` of every image of ``split``, or ``None`` where it does not
    apply: the method declares no ``frozen_features``, ``limit_mb`` is 0, the features would
    take more than ``limit_mb`` of host memory, or two images of the split share a path (they
    could not be told apart); a warning names the last two reasons.

    ``state`` is the method's initial state (host or single-device arrays); the batches are
    padded to ``batch_size`` so the features compile once; ``disable=False`` shows a
    progress bar.
    """
    if not method.uses_frozen_features or limit_mb <= 0:
        return None
    n = len(split)
    batches = iter(split.batches(batch_size=batch_size, num_workers=num_workers))
    first = next(batches)
    if cached_feature_shapes(method, state, np.shape(first.images), n, limit_mb,
                             warn=True) is None:
        return None
    compute = jax.jit(method.frozen_features)
    rows: dict[str, int] = {}
    parts: list[Any] = []
    with tqdm(total=-(-n // batch_size), unit="batch", disable=disable,
              desc=f"caching {method.name} features") as bar:
        for batch in itertools.chain([first], batches):
            for path in batch.paths:
                if path in rows:
                    warnings.warn(f"two training images share the path {path!r}; the frozen "
                                  "features are computed at every step instead", stacklevel=3)
                    return None
                rows[path] = len(rows)
            images = np.asarray(batch.images, np.float32)
            size = len(images)
            if size < batch_size:  # pad with copies of the first image: one compilation
                images = np.concatenate([images, np.repeat(images[:1], batch_size - size, 0)])
            out = jax.device_get(compute(state, images))
            parts.append(jax.tree.map(lambda leaf, size=size: np.asarray(leaf[:size]), out))
            bar.update(1)
    features = jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)
    return FrozenCache(rows, features)


def cached_feature_shapes(method: Any, state: State, batch_shape: tuple[int, ...], n_images: int,
                          limit_mb: float, *, warn: bool = False) -> Any:
    """The shapes (``jax.ShapeDtypeStruct`` pytree) of ``method.frozen_features`` of one batch
    of images ``batch_shape`` ``[b, H, W, 3]``, or ``None`` when no cache is kept: no
    ``frozen_features``, ``limit_mb`` 0, or the ``n_images`` would take more than
    ``limit_mb`` MiB (with ``warn``, a warning says so). Traces, does not compute."""
    if not method.uses_frozen_features or limit_mb <= 0:
        return None
    images = jax.ShapeDtypeStruct(tuple(batch_shape), np.float32)
    shapes = jax.eval_shape(method.frozen_features, state, images)
    per_image = sum(np.prod(s.shape[1:]) * s.dtype.itemsize for s in jax.tree.leaves(shapes))
    need_mb = n_images * per_image / 2**20
    if need_mb <= limit_mb:
        return shapes
    if warn:
        warnings.warn(f"{method.name}: the frozen features of the "
                      f"{n_images} training images would take {need_mb:.0f} MiB, over the "
                      f"cache limit of {limit_mb:.0f} MiB; computing them at every step "
                      "instead", stacklevel=4)
    return None
