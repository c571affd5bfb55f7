"""Shared pytest fixtures: where the real datasets live, and a skip when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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
