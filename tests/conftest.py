"""Shared pytest fixtures: where the real datasets live, and a skip when they are absent.

The suite shares one persistent JAX compilation cache (``$ANOMJAX_TEST_JAX_CACHE``, default
a per-user folder in the temp directory), in this process, the xdist workers and every
subprocess a test starts: the many tests that compile the same program (a resumed fit, the
CLI's test and predict after its fit, one backbone at one size) compile it once. The cache
is keyed by the program, the jax version and the compile options, so it never changes a
result, only how long a test takes.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path

import jax
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    cache = os.environ.setdefault("ANOMJAX_TEST_JAX_CACHE", str(
        Path(tempfile.gettempdir()) / f"anomjax-test-jax-cache-{getpass.getuser()}"))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def shared_data_root() -> Path:
    """``$ANOMJAX_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("ANOMJAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets; tests that need it are skipped, saying why, without it."""
    root = shared_data_root()
    if not (root / "mvtec3d_tire").is_dir() or not (root / "magnetic_tile").is_dir():
        pytest.skip(f"real datasets not found under {root} (set ANOMJAX_SHARED_DATA to the folder "
                    "holding mvtec3d_tire/ and magnetic_tile/)")
    return root
