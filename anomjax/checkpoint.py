"""Run directories: a method's config, its fitted state (Orbax) and run metadata.

Layout of ``RUN_DIR``::

    config.json      method name + hyper-parameters, data settings, seed, versions
    state/           Orbax checkpoint of the state pytree (nested dict of arrays)
    threshold.json   written by ``anomjax test``: F1-optimal threshold and score range
    fit.json         fit timings and sizes
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from anomjax.methods.base import method_config, method_from_config
from anomjax.types import State

CONFIG_FILE = "config.json"
STATE_DIR = "state"
THRESHOLD_FILE = "threshold.json"


class RunError(Exception):
    """A run directory is missing or incomplete."""


def save_run(run_dir: str | Path, method: Any, state: State, extra: dict[str, Any]) -> Path:
    """Write ``method``'s config (plus ``extra`` settings) and ``state`` into ``run_dir``.

    An existing state checkpoint in ``run_dir`` is replaced.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**method_config(method), **extra, "anomjax_version": _version()}
    write_json(run_dir / CONFIG_FILE, config)
    state_dir = run_dir / STATE_DIR
    if state_dir.exists():
        shutil.rmtree(state_dir)
    with _quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(state_dir, state)
    return run_dir


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run; a clear error when ``run_dir`` is not a run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); "
                       "create one with `anomjax fit ... --out RUN_DIR`")
    return json.loads(path.read_text())


def load_run(run_dir: str | Path) -> tuple[Any, State, dict[str, Any]]:
    """Restore ``(method, state, config)`` saved by :func:`save_run`."""
    config = load_config(run_dir)
    state_dir = Path(run_dir).resolve() / STATE_DIR
    if not state_dir.is_dir():
        raise RunError(f"{run_dir}: the fitted state ({STATE_DIR}/) is missing; "
                       "the fit did not finish — run `anomjax fit` again")
    with _quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(state_dir)
    state = jax.tree_util.tree_map(jax.numpy.asarray, state)
    return method_from_config(config), state, config


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


class _quiet_orbax:
    """Silence Orbax's informational logging for the duration of a block."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("absl")
        self._level = self._logger.level
        self._logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


def _version() -> str:
    from anomjax import __version__

    return __version__
