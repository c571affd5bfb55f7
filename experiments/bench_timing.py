"""Throughput timing shared by the latency benchmarks, ours and the PyTorch peer's (plain
Python, so that it imports in the reference venv, which has no anomjax or jax)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any


def time_batches(call: Callable[[Any], Any], images: Any, batch: int) -> tuple[float, float]:
    """``(images per second, first call s)`` of ``call`` on ``images`` ``[N, ...]`` in
    batches of ``batch``: the first call (compilation, warm-up) is timed on its own, then
    every whole batch (a last partial batch is left out)."""
    start = time.perf_counter()
    call(images[:batch])
    first = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(images) - batch + 1, batch):
        call(images[i:i + batch])
    seconds = time.perf_counter() - start
    return (len(images) // batch) * batch / seconds, first


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
