"""Training metrics as JSON lines and TensorBoard events."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends ``{"step": s, **metrics}`` to ``run_dir/metrics.jsonl`` and TensorBoard events.

    The events go to ``run_dir/tensorboard`` through ``tensorboardX``. On resume from step
    ``s``, lines after ``s`` (written by a run that was killed before its next checkpoint)
    are dropped so the log matches the training that actually counts. ``enabled=False``
    (other processes than 0 in a multi-host run, or no run folder) makes every call a no-op.
    """

    def __init__(self, run_dir: str | Path | None, *, resume_step: int | None = None,
                 enabled: bool = True):
        self.enabled = enabled and run_dir is not None
        self._writer = None
        self._file = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        kept = _lines_up_to(path, resume_step) if resume_step is not None else []
        self._file = open(path, "w")  # noqa: SIM115 (kept open for the whole run)
        for line in kept:
            self._file.write(line + "\n")
        self._file.flush()
        self._writer = SummaryWriter(str(run_dir / "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
        """Record scalar ``metrics`` at ``step`` under ``prefix/`` in TensorBoard."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        record = {"step": step, **{f"{prefix}/{k}": v if math.isfinite(v) else str(v)
                                   for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for k, v in values.items():
            self._writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            self._file.close()
            self._writer.close()
            self._file = self._writer = None


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The lines of ``path`` up to ``step``; corrupt lines (a killed writer's half line)
    are dropped with a warning that names them."""
    if not path.is_file():
        return []
    kept = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"{path}:{number}: dropping a corrupt metrics line", stacklevel=3)
            continue
        if record_step <= step:
            kept.append(line)
    return kept
