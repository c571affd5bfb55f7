"""On-disk cache of converted Flax backbone variables (msgpack), keyed by the source file.

The cache lives in ``$ANOMJAX_CACHE/backbones`` (default ``~/.cache/anomjax/backbones``). An
entry's name hashes the backbone name and the weights file's absolute path, size and
modification time, so editing or replacing the file invalidates it. Unreadable entries, and
entries whose structure or shapes differ from the backbone's (checked before use), are
rebuilt with a warning; an unwritable cache folder only costs speed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax import serialization

CACHE_FORMAT = 1


def cache_dir() -> Path:
    """``$ANOMJAX_CACHE/backbones`` or ``~/.cache/anomjax/backbones``."""
    root = os.environ.get("ANOMJAX_CACHE") or Path.home() / ".cache" / "anomjax"
    return Path(root) / "backbones"


def cache_path(name: str, source: Path) -> Path:
    """Where the converted variables of backbone ``name`` from ``source`` are kept."""
    stat = source.stat()
    ident = f"{CACHE_FORMAT}|{name}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{digest}.msgpack"


def cached_variables(name: str, source: Path, build: Callable[[], dict[str, Any]],
                     use_cache: bool = True,
                     problem: Callable[[Any], str | None] = lambda _: None) -> dict[str, Any]:
    """``build()``'s result, read from the cache when present, written to it otherwise.

    ``problem(entry)`` describes what is wrong with a restored entry (``None``: usable).
    """
    if not use_cache:
        return build()
    path = cache_path(name, source)
    if path.is_file():
        try:
            entry = serialization.msgpack_restore(path.read_bytes())
            wrong = problem(entry)
        except Exception as err:  # noqa: BLE001 - any corrupt entry is simply rebuilt
            wrong = str(err)
        if wrong is None:
            return entry
        warnings.warn(f"ignoring unreadable backbone cache entry {path}: {wrong}", stacklevel=3)
    variables = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
            tmp.write(serialization.msgpack_serialize(variables))
        os.replace(tmp.name, path)
    except OSError as err:
        warnings.warn(f"could not write backbone cache {path}: {err}", stacklevel=3)
    return variables
