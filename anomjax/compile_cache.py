"""A persistent cache of compiled XLA programs for the command line.

A fit compiles its train step, a test its scoring function, and each compilation of a
flow or a GAN takes 10-30 s on a CPU. Sweeps, seeds, the benchmark protocol (every category
of a dataset at one image size) and a ``test`` after its ``fit`` compile the same programs
again in new processes. :func:`enable_compile_cache` points JAX's persistent compilation
cache at ``$ANOMJAX_CACHE/xla`` (default ``~/.cache/anomjax/xla``), so each program is
compiled once per machine; the cache is keyed by the program, the jax version, the device
and the compile options, so it changes no result. The ``anomjax`` command enables it;
``ANOMJAX_COMPILE_CACHE=0`` turns it off, and a cache folder the user already chose
(``JAX_COMPILATION_CACHE_DIR``) is left as it is. JAX stores only programs whose compilation
took at least ``jax_persistent_cache_min_compile_time_secs`` (1 s by default).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def compile_cache_dir() -> Path:
    """``$ANOMJAX_CACHE/xla``, default ``~/.cache/anomjax/xla``."""
    root = os.environ.get("ANOMJAX_CACHE") or Path.home() / ".cache" / "anomjax"
    return Path(root) / "xla"


def enable_compile_cache() -> Path | None:
    """Turn the persistent compilation cache on (see the module docstring); returns its
    folder, or ``None`` when it is off or the user configured JAX's own."""
    if os.environ.get("ANOMJAX_COMPILE_CACHE", "1").lower() in {"0", "false", "no", "off"}:
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return None
    folder = compile_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache only costs speed
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
