"""The precision policy: ask for full float32 products only where they decide a score.

On GPUs a float32 matmul or convolution at the default precision runs in TF32, on TPUs in
bfloat16 passes; ``Precision.HIGHEST`` asks for full float32. anomjax asks for it

* where a computation decides a score: kNN and Mahalanobis distances, Gaussian fits and
  inverses, the flows' log-likelihoods, the networks whose output is the score (a
  reconstruction, a heatmap), the resizing and smoothing of the maps
  (:mod:`anomjax.scoring`). Score-only helpers pass ``precision=HIGHEST``; a method's
  ``score`` traces its own networks under :func:`full_precision` (or passes ``HIGHEST`` to
  networks that take a ``precision``), leaving a frozen backbone at the default;
* nowhere inside a training step: networks, flows' subnets, upsampling and training losses
  run at the default precision (TF32 / bfloat16 passes), as any training loop does.

With ``compute_dtype="bfloat16"`` (:mod:`anomjax.train.step`) a loss runs on bfloat16
copies of the params, state and images, while the master params, the BatchNorm statistics,
the optimiser state, the flows' log-determinants and the losses stay float32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax

HIGHEST = jax.lax.Precision.HIGHEST
F = TypeVar("F", bound=Callable[..., Any])


def full_precision(on: bool = True) -> contextlib.AbstractContextManager:
    """A context in which every product traced that sets no precision of its own runs at
    ``HIGHEST`` (nothing when ``on`` is false)."""
    return jax.default_matmul_precision("highest") if on else contextlib.nullcontext()


def scored_at_full_precision(score: F) -> F:
    """``score`` traced under :func:`full_precision`: for a method whose whole score is its
    own networks' output (no frozen backbone inside)."""

    @functools.wraps(score)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with full_precision():
            return score(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
