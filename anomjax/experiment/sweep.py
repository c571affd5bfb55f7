"""Sweeps: many runs of one config over swept fields, resumable and shared between processes.

``config.sweep`` (``field -> values``) is expanded as a Cartesian product and
``config.sweep_zip`` (``field -> values``, equal lengths) as one zipped axis; the runs are
their product, in a fixed order. Each run has a readable id made of its swept values and
goes into ``SWEEP/runs/<id>/``; every finished run appends one line per test category to
``SWEEP/results.jsonl``: ``{"run": id, "swept": {...}, <config values>, <metrics>}``.

Run again, a sweep skips the runs that ``results.jsonl`` already holds (it trains nothing
when all are done), and a run killed half-way resumes from its checkpoints. Two ways to
spread a sweep over processes:

* independent processes (``--process-index/--process-count``, no ``jax.distributed``):
  process ``p`` of ``P`` takes the runs ``i`` with ``i % P == p``, each on its own devices;
* one ``jax.distributed`` job (a pod): every process takes part in every run, which trains
  on the global mesh of all processes' devices (the collectives of a step need all of
  them); process 0 decides which runs are due, holds their locks and writes the results,
  and tells the others (as big_vision runs every host on the same program).

The tables built from ``results.jsonl`` cannot be wrong by construction:

* A sweep folder belongs to one config: ``sweep.json`` records it, and a sweep whose
  fields other than the swept values differ (other epochs, another learning rate, other
  swept fields) is refused, naming the fields, unless asked to start over
  (``restart=True``, ``--overwrite``); the swept values may change (more seeds).
* Each run is locked while it trains (a second sweep in the same folder skips it as
  ``busy``) and ``results.jsonl`` holds each run once: lines are keyed by run and a run is
  checked against the file again, under the lock, just before it starts.
* A run that diverges (``TrainingDiverged``, non-finite scores) is recorded as ``failed``
  with its error and the sweep goes on; a rerun retries it only with ``retry_failed``
  (``--retry-failed``). Any other error stops the sweep.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from anomjax.experiment.config import changed_fields, flatten, get_path, parse_value, set_path
from anomjax.experiment.run import run_experiment
from anomjax.run_folder import RunError, RunInUse, run_lock, write_json
from anomjax.train import TrainingDiverged

RESULTS_FILE = "results.jsonl"
SWEEP_FILE = "sweep.json"
#: Config values recorded in every results line, next to the swept ones.
RECORDED_FIELDS = ("method.name", "image_size", "epochs", "batch_size", "seed")


def parse_sweep_args(items: Sequence[str], config: ml_collections.ConfigDict
                     ) -> dict[str, tuple[Any, ...]]:
    """``["seed=0,1", "method.sigma=2,4"]`` -> ``{field: values}``, typed like the field."""
    out: dict[str, tuple[Any, ...]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.removeprefix("config.")
        if not sep or not key or not text:
            raise ValueError(f"--sweep {item!r}: expected FIELD=V1,V2,...")
        like = get_path(config, key)
        try:
            values = tuple(parse_value(t, like) for t in text.split(","))
        except ValueError as err:
            raise ValueError(f"--sweep {item!r}: field {key}: {err}") from None
        out[key] = values
    return out


def add_axes(axes: ml_collections.ConfigDict, values: dict[str, tuple[Any, ...]]) -> None:
    """Store ``{"a.b": values}`` in ``config.sweep`` / ``config.sweep_zip`` as nested fields
    (a ConfigDict takes no dots in a key)."""
    with axes.unlocked():
        for dotted, vals in values.items():
            *parents, leaf = dotted.split(".")
            node = axes
            for part in parents:
                if part not in node:
                    node[part] = ml_collections.ConfigDict()
                node = node[part]
            node[leaf] = vals


def _axes(config: ml_collections.ConfigDict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    product = {k: tuple(v) for k, v in flatten(config.sweep.to_dict()).items()}
    zipped = {k: tuple(v) for k, v in flatten(config.sweep_zip.to_dict()).items()}
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise ValueError(f"config.sweep_zip: every field needs the same number of values, "
                         f"got {({k: len(v) for k, v in zipped.items()})}")
    both = sorted(set(product) & set(zipped))
    if both:
        raise ValueError(f"fields swept both as a product and zipped: {both}")
    for key in (*product, *zipped):
        get_path(config, key)  # a clear error for a field the config lacks
    return product, zipped


def expand(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The swept values of every run, in order (one empty dict when nothing is swept)."""
    product, zipped = _axes(config)
    zip_rows = ([dict(zip(zipped, row, strict=True)) for row in zip(*zipped.values(),
                                                                      strict=True)]
                if zipped else [{}])
    runs = []
    for combo in itertools.product(*product.values()):
        for z in zip_rows:
            runs.append({**dict(zip(product, combo, strict=True)), **z})
    return runs


def run_config(config: ml_collections.ConfigDict, values: dict[str, Any]
               ) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``values`` set and the sweep fields emptied."""
    out = ml_collections.ConfigDict(config.to_dict())
    for key, value in values.items():
        set_path(out, key, value)
    with out.unlocked():
        out.sweep, out.sweep_zip = {}, {}
    return out


def _member_swept(swept: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A run's swept values, plus the learning rate of a learning-rate population's member
    (its members are swept over that rate in one run)."""
    if "learning_rate" in record:
        return {**swept, "method.learning_rate": record["learning_rate"]}
    return swept


def run_id(values: dict[str, Any]) -> str:
    """A readable, file-name-safe id of one run's swept values (``"run"`` when none)."""
    if not values:
        return "run"
    parts = []
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        text = Path(text).name if "/" in text else text
        parts.append(f"{key.split('.')[-1]}={text}")
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", "_".join(parts))[:200]


def run_ids(runs: list[dict[str, Any]]) -> list[str]:
    """:func:`run_id` of every run; runs whose readable ids collide although their values
    differ (two folders of the same name) get a short hash of their values appended."""
    readable = [run_id(v) for v in runs]
    ids = list(readable)
    for i, name in enumerate(readable):
        if readable.count(name) > 1:
            digest = hashlib.sha256(json.dumps(runs[i], sort_keys=True, default=str)
                                    .encode()).hexdigest()[:8]
            ids[i] = f"{name[:190]}~{digest}"
    if len(set(ids)) != len(ids):
        raise ValueError("the sweep lists the same run twice; sweep distinct values")
    return ids


def read_lines(sweep_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``results.jsonl``; a corrupt line is an error naming the file and line."""
    path = sweep_dir / RESULTS_FILE
    if not path.is_file():
        return []
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as err:
            raise RunError(f"{path}, line {number}: not valid JSON ({err.msg}); remove or "
                           "repair the line (its run is then trained again)") from None
        if not isinstance(line, dict) or not isinstance(line.get("run"), str):
            raise RunError(f"{path}, line {number}: not a result line (no 'run' id); remove "
                           "or repair the line")
        lines.append(line)
    return lines


def finished_runs(sweep_dir: Path, *, retry_failed: bool = False) -> set[str]:
    """Ids of the runs ``results.jsonl`` holds (failed ones too unless ``retry_failed``)."""
    return {line["run"] for line in read_lines(sweep_dir)
            if not (retry_failed and line.get("status") == "failed")}


def _record(sweep_dir: Path, run: str, lines: list[dict[str, Any]]) -> None:
    """Replace run ``run``'s lines in ``results.jsonl`` by ``lines``, atomically and under
    the file's lock, so a run never appears twice."""
    with open(sweep_dir / f"{RESULTS_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = [line for line in read_lines(sweep_dir) if line["run"] != run]
        text = "".join(json.dumps(line, allow_nan=False, default=_jsonable) + "\n"
                       for line in [*kept, *lines])
        tmp = sweep_dir / f".{RESULTS_FILE}.tmp"
        tmp.write_text(text)
        tmp.replace(sweep_dir / RESULTS_FILE)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def process_share(n_runs: int, process_index: int, process_count: int) -> list[int]:
    """Indices of the runs process ``process_index`` of ``process_count`` takes."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                         f"{process_count}")
    return list(range(process_index, n_runs, process_count))


def run_sweep(config: ml_collections.ConfigDict, sweep_dir: str | Path, *,
              process_index: int = 0, process_count: int = 1, restart: bool = False,
              retry_failed: bool = False, progress: bool = True) -> Iterator[tuple[str, str]]:
    """Run this process's share of the sweep; yields ``(run id, status)`` with status
    ``"done"``, ``"skipped"`` (already in ``results.jsonl``), ``"busy"`` (another process
    is training it) or ``"failed"`` (diverged; recorded with its error)."""
    sweep_dir = Path(sweep_dir)
    runs = expand(config)
    ids = run_ids(runs)
    collective = jax.process_count() > 1  # one jax.distributed job: all take every run
    primary = jax.process_index() == 0 if collective else True
    shares = (range(len(runs)) if collective else
              process_share(len(runs), process_index, process_count))
    if primary:
        claim_sweep_folder(sweep_dir, config, restart=restart and process_index == 0)
    for i in shares:
        cfg = run_config(config, runs[i])
        run_dir = sweep_dir / "runs" / ids[i]
        with contextlib.ExitStack() as held:
            status = "due"
            if primary:
                run_dir.mkdir(parents=True, exist_ok=True)
                try:
                    held.enter_context(run_lock(run_dir))
                except RunInUse:
                    status = "busy"
                if status == "due" and ids[i] in finished_runs(sweep_dir,
                                                               retry_failed=retry_failed):
                    status = "skipped"
            if collective:  # every process follows process 0's decision
                status = _STATUSES[int(multihost_utils.broadcast_one_to_all(
                    np.int32(_STATUSES.index(status))))]
            if status != "due":
                yield ids[i], status
                continue
            started = primary and any(p.name != ".lock" for p in run_dir.iterdir())
            if collective:
                started = bool(multihost_utils.broadcast_one_to_all(np.int32(started)))
            try:
                records = run_experiment(cfg, run_dir, resume=started, lock=False,
                                         progress=progress)
            except (TrainingDiverged, FloatingPointError) as err:
                if primary:
                    _record(sweep_dir, ids[i], [{"run": ids[i], "swept": runs[i],
                                                 "status": "failed", "error": str(err)}])
                yield ids[i], "failed"
                continue
            if primary:
                recorded = {key: get_path(cfg, key) for key in RECORDED_FIELDS}
                _record(sweep_dir, ids[i], [
                    {"run": ids[i], "swept": _member_swept(runs[i], r), **recorded,
                     "status": r.get("status", "done"),
                     **{k: _finite(v) for k, v in r.items() if k != "status"}}
                    for r in records])
            yield ids[i], "done"


_STATUSES = ("due", "skipped", "busy")


def claim_sweep_folder(sweep_dir: Path, config: ml_collections.ConfigDict, *,
                       restart: bool = False) -> None:
    """Make ``sweep_dir`` this config's sweep folder, or check that it already is.

    ``sweep.json`` holds the config without the swept values; a folder made for another
    config is refused naming the differing fields, unless ``restart`` (its runs and results
    are deleted first).
    """
    path = sweep_dir / SWEEP_FILE
    mine = _sweep_identity(config)
    if restart and sweep_dir.is_dir():
        for name in ("runs", RESULTS_FILE, SWEEP_FILE, "results.csv", "summary.md", "plots"):
            target = sweep_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{path}: cannot read the sweep's config ({err})") from None
        changed = changed_fields(theirs, mine)
        if changed:
            raise RunError(f"{sweep_dir}: the sweep folder was made for another config "
                           f"({'; '.join(changed)}); use the same config, another folder, "
                           "or --overwrite to start the sweep over")
    elif (sweep_dir / RESULTS_FILE).exists() or (sweep_dir / "runs").exists():
        raise RunError(f"{sweep_dir}: holds sweep results without {SWEEP_FILE} (written by "
                       "an older anomjax, or not a sweep); use another folder or --overwrite "
                       "to start over")
    else:
        write_json(path, mine)


def _sweep_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config's flat fields other than the swept values, plus the swept field names."""
    product, zipped = _axes(config)
    swept = set(product) | set(zipped)
    flat = flatten(json.loads(json.dumps(config.to_dict(), default=_jsonable)))
    out = {k: v for k, v in flat.items()
           if k not in swept and not k.startswith(("sweep.", "sweep_zip."))}
    out["swept fields"] = sorted(swept)
    return out
