"""Run directories: a method's config, its fitted state (Orbax) and run metadata.

Layout of ``RUN_DIR``::

    config.json      method name + hyper-parameters, data settings, seed, versions
    state/           Orbax checkpoint of the state pytree (nested dict of arrays)
    threshold.json   written by ``anomjax test``: the image threshold and score ranges
    checkpoints/     training checkpoints (methods that train), metrics.jsonl, tensorboard/
    experiment.json, metrics.json, maps/, plots/, members/   written by ``anomjax run``
    .lock            held (``flock``) by the one ``anomjax`` process using the folder

A run folder's files belong to one run: ``fit`` refuses a folder that holds another run
(unless asked to replace it whole, or to resume its training), and a new ``state/`` removes
the old ``threshold.json``. ``config.json`` records a ``run_id``, a hash of the settings that
decide the scores (``config_sha256``: method, hyper-parameters, image settings) and a
signature of the state's arrays (``state_signature``): a hand-edited config, a config copied
from another run, and a ``threshold.json`` copied from another run are refused, naming the
file (run folders written before these records are read as before). Every file is written
atomically (a temporary file in the same folder, then ``os.replace``), which replaces a
planted symbolic link instead of writing through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from anomjax.methods.base import method_config, method_from_config
from anomjax.types import State

CONFIG_FILE = "config.json"
STATE_DIR = "state"
THRESHOLD_FILE = "threshold.json"
LOCK_FILE = ".lock"
#: Entries whose presence marks a folder as an anomjax run (safe to replace with --overwrite).
RUN_ENTRIES = (CONFIG_FILE, STATE_DIR, THRESHOLD_FILE, "checkpoints", "metrics.jsonl",
               "tensorboard", "experiment.json", "metrics.json", "maps", "plots", "members")
THRESHOLD_KEYS = ("image_threshold", "image_min", "image_max", "pixel_min", "pixel_max")


class RunError(Exception):
    """A run directory is missing, incomplete, corrupt, in use or not writable."""


class RunInUse(RunError):
    """Another process holds the run folder's lock."""


# ---------------------------------------------------------------------------- the folder


def prepare_run_dir(run_dir: str | Path, *, resume: bool = False,
                    overwrite: bool = False) -> Path:
    """Check (before any work) that ``fit`` may write ``run_dir``; create it.

    An existing non-empty folder is refused unless ``resume`` (continue its training) or
    ``overwrite`` (delete it whole first; only a folder that holds an anomjax run, never
    another folder). Returns the absolute path.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {run_dir}: exists and is not a folder")
    entries = sorted(p.name for p in path.iterdir()
                     if p.name != LOCK_FILE and not _empty(p)) if path.is_dir() else []
    if entries and not resume:
        if not overwrite:
            raise RunError(f"--out {run_dir}: the folder is not empty (holds "
                           f"{', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}); "
                           "pass --overwrite to replace the run in it, --resume to continue "
                           "its training, or choose another folder")
        if not any(name in RUN_ENTRIES for name in entries):
            raise RunError(f"--out {run_dir}: not an anomjax run folder (no "
                           f"{CONFIG_FILE} or checkpoints/); refusing to delete it")
        for name in entries:
            victim = path / name
            if victim.is_dir() and not victim.is_symlink():
                shutil.rmtree(victim)
            else:
                victim.unlink()
    check_writable_dir(path, "--out")
    return path.absolute()


def _empty(path: Path) -> bool:
    """An empty folder or file (what a fit that failed before its first step leaves)."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return not any(path.iterdir())
    return path.is_file() and path.stat().st_size == 0


def check_writable_dir(path: str | Path, flag: str) -> None:
    """Create folder ``path`` (and parents) or raise a :class:`RunError` naming ``flag``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"{flag} {path}: cannot create the folder ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"{flag} {path}: the folder is not writable")


def check_writable_file(path: str | Path, flag: str) -> None:
    """Refuse an output file path that is a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise RunError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise RunError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"{flag} {path}: the folder {parent} is not writable")


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` exclusively; a second process gets a :class:`RunError` at once.

    The lock is an ``flock`` on an open file, released by the kernel when the process ends
    (also on SIGKILL), so a killed run never leaves a stale lock behind.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise RunError(f"{run_dir}: cannot create the lock file {path} ({err.strerror})"
                       ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(f"{run_dir} is in use by another anomjax process (fit or test "
                           "holds its lock); wait for it to finish or use another folder"
                           ) from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Write ``path`` through a temporary file in its folder, renamed over it on success.

    A failure leaves the old file (or none), never a truncated one; a symbolic link at
    ``path`` is replaced, not followed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinite floats (also NumPy scalars) replaced by ``None``."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented, strict JSON (``null`` for NaN), atomically."""
    text = json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_writer(path) as f:
        f.write(text)


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing, unreadable or corrupt file is a :class:`RunError`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: cannot read the {what} ({err})") from None


# ---------------------------------------------------------------------------- runs


def save_run(run_dir: str | Path, method: Any, state: State, extra: dict[str, Any]) -> Path:
    """Write ``method``'s config (plus ``extra`` settings) and ``state`` into ``run_dir``.

    The new state is written next to the old one and renamed into place; ``threshold.json``
    (chosen for the old state) is removed. In a multi-process run only process 0 writes.
    """
    run_dir = Path(run_dir).absolute()
    if jax.process_index() != 0:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    host_state = jax.device_get(state)
    tmp = run_dir / f".{STATE_DIR}-{os.getpid()}.tmp"
    old = run_dir / f".{STATE_DIR}-{os.getpid()}.old"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    only_me = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0},
                                                 barrier_sync_key_prefix="anomjax_save_run")
    with _quiet_orbax(), ocp.StandardCheckpointer(
            multiprocessing_options=only_me) as checkpointer:
        checkpointer.save(tmp, host_state)
    state_dir = run_dir / STATE_DIR
    with contextlib.suppress(FileNotFoundError):
        (run_dir / THRESHOLD_FILE).unlink()
    if state_dir.is_symlink() or state_dir.is_file():
        state_dir.unlink()
    elif state_dir.exists():
        os.replace(state_dir, old)
    os.replace(tmp, state_dir)
    if old.exists():
        shutil.rmtree(old)
    config = {**method_config(method), **extra, "anomjax_version": _version(),
              "run_id": uuid.uuid4().hex, "state_signature": state_signature(host_state)}
    config["config_sha256"] = config_hash(config)
    write_json(run_dir / CONFIG_FILE, config)
    return run_dir


#: The fields of ``config.json`` that decide a run's scores.
SCORING_FIELDS = ("method", "params", "image_size", "crop", "resize_dtype")


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the :data:`SCORING_FIELDS` of a run config (JSON, sorted keys)."""
    fields = {k: config.get(k) for k in SCORING_FIELDS}
    text = json.dumps(json_safe(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_signature(state: State) -> str:
    """SHA-256 of every array's path, shape and dtype in ``state`` (not of the values)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    items = sorted((jax.tree_util.keystr(path), list(np.shape(leaf)),
                    str(getattr(leaf, "dtype", None) or np.asarray(leaf).dtype))
                   for path, leaf in leaves)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run; a clear error when ``run_dir`` is not a run or the
    file is corrupt or lacks a required field."""
    path = Path(run_dir) / CONFIG_FILE
    members = Path(run_dir) / "members"
    if not path.is_file() and members.is_dir():
        count = sum(1 for p in members.iterdir() if (p / CONFIG_FILE).is_file())
        raise RunError(f"{run_dir}: holds a population of {count} members, each its own run: "
                       f"use {members / '0'} ... {members / str(max(count - 1, 0))}")
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); "
                       "create one with `anomjax fit ... --out RUN_DIR`")
    config = read_json(path, "run config")
    if not isinstance(config, dict):
        raise RunError(f"{path}: the run config is a {type(config).__name__}, not an object")
    for key in ("method", "params", "image_size"):
        if key not in config:
            raise RunError(f"{path}: the run config has no {key!r} field")
    return config


def load_method(run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(method, config)`` of a run, checked (hyper-parameter bounds included) before any
    state is read."""
    config = read_run_config(run_dir)
    try:
        if not isinstance(config["params"], dict):
            raise TypeError("'params' is not an object")
        method = method_from_config(config)
    except (TypeError, ValueError) as err:
        raise RunError(f"{Path(run_dir) / CONFIG_FILE}: invalid run config ({err})") from None
    return method, config


def load_run(run_dir: str | Path) -> tuple[Any, State, dict[str, Any]]:
    """Restore ``(method, state, config)`` saved by :func:`save_run`, refusing a config
    that was edited after the fit or belongs to another run's state."""
    method, config = load_method(run_dir)
    if "config_sha256" in config and config["config_sha256"] != config_hash(config):
        raise RunError(f"{Path(run_dir) / CONFIG_FILE}: the method, its hyper-parameters or "
                       "the image settings were edited after the fit, so they no longer "
                       "describe the fitted state; restore the file or fit again")
    state_dir = Path(run_dir).absolute() / STATE_DIR
    if not state_dir.is_dir():
        raise RunError(f"{run_dir}: the fitted state ({STATE_DIR}/) is missing; "
                       "the fit did not finish — run `anomjax fit` again")
    try:
        with _quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(state_dir)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunError(f"{state_dir}: cannot read the fitted state ({err})") from None
    if "state_signature" in config and config["state_signature"] != state_signature(state):
        raise RunError(f"{Path(run_dir) / CONFIG_FILE}: does not describe the fitted state in "
                       f"{state_dir} (its arrays differ from the ones saved with this config: "
                       "a config.json copied from another run?); fit again")
    state = jax.tree_util.tree_map(jax.numpy.asarray, state)
    return method, state, config


def load_threshold(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``threshold.json`` (``None`` when absent), checked: every key, finite."""
    path = Path(run_dir) / THRESHOLD_FILE
    if not path.exists() and not path.is_symlink():
        return None
    record = read_json(path, "threshold file")
    if not isinstance(record, dict):
        raise RunError(f"{path}: the threshold file is not a JSON object")
    out = {}
    for key in THRESHOLD_KEYS:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise RunError(f"{path}: {key!r} must be a finite number, got {value!r}; run "
                           "`anomjax test` again to rewrite it")
        out[key] = float(value)
    owner = read_run_config(run_dir).get("run_id")
    if owner is not None and record.get("run_id") != owner:
        raise RunError(f"{path}: the threshold was chosen for another run (run_id "
                       f"{record.get('run_id')!r}, this run is {owner!r}: copied?); run "
                       "`anomjax test` on this run to choose its own")
    return {**record, **out}


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
