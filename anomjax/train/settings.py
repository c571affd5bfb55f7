"""The training engine's settings a user chooses per run (as big_vision's configs do).

``EngineSettings`` is what ``anomjax fit`` flags, an experiment config's ``engine`` fields
and :func:`anomjax.runs.fit` hand to :func:`anomjax.train.train_method`: mixed precision,
how often to log and checkpoint, how many checkpoints to keep, the frozen-feature cache's
memory bound, gradient accumulation and a profiler window. Every field is checked when the
settings are built, so a bad value is refused before any work.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """How the engine runs a training (not what it trains).

    Attributes:
      compute_dtype: ``"bfloat16"`` runs the loss on bfloat16 copies of the params, state and
        images (master params, optimiser and BatchNorm statistics stay float32); ``None`` or
        ``"float32"``: float32.
      log_every: fetch and log the step metrics every this many steps.
      checkpoint_every: also checkpoint every this many steps (besides every epoch's end).
      keep: how many checkpoints to keep.
      frozen_cache_mb: bound (MiB) of the host cache of frozen features (0: no cache).
      accumulate: average the gradients of this many batches per optimiser update
        (``optax.MultiSteps``); a budget in steps counts optimiser updates.
      profile_steps: ``(a, b)``: a ``jax.profiler`` trace of steps ``a + 1 .. b`` on process
        0, written to ``RUN/profile`` (open it with TensorBoard or Perfetto).
    """

    compute_dtype: str | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    keep: int = 3
    frozen_cache_mb: float = 2048.0
    accumulate: int = 1
    profile_steps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.compute_dtype not in (None, *COMPUTE_DTYPES):
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES} or None, got "
                             f"{self.compute_dtype!r}")
        for name in ("log_every", "keep", "accumulate"):
            _check_count(name, getattr(self, name))
        if self.checkpoint_every is not None:
            _check_count("checkpoint_every", self.checkpoint_every)
        mb = self.frozen_cache_mb
        if isinstance(mb, bool) or not isinstance(mb, int | float) or not (
                math.isfinite(mb) and mb >= 0):
            raise ValueError(f"frozen_cache_mb must be a finite number >= 0, got {mb!r}")
        window = self.profile_steps
        if window is not None and (len(window) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in window)
                or not 0 <= window[0] < window[1]):
            raise ValueError(f"profile_steps must be two step numbers 0 <= a < b, got "
                             f"{window!r}")

    def train_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`anomjax.train.train_method`."""
        return dataclasses.asdict(self)


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
