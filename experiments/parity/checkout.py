"""Where a parity script finds the authors' repository: ``--reference-root`` (default
``/tmp/refs``), the folder the snapshots are extracted to (see ``README.md``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def reference_checkout(folder: str, description: str) -> Path:
    """``<--reference-root>/<folder>``, put first on ``sys.path`` so the script can import the
    reference's modules; ``description`` is the script's help text."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    path = parser.parse_args().reference_root / folder
    if not path.is_dir():
        raise SystemExit(f"{path} not found: extract the reference there (see README.md)")
    sys.path.insert(0, str(path))
    return path
