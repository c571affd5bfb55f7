"""Sweeps: many runs of one config over swept fields, resumable and shared between processes.

``config.sweep`` (``field -> values``) is expanded as a Cartesian product and
``config.sweep_zip`` (``field -> values``, equal lengths) as one zipped axis; the runs are
their product, in a fixed order. Each run has a readable id made of its swept values and
goes into ``SWEEP/runs/<id>/``; every finished run appends one line per test category to
``SWEEP/results.jsonl``: ``{"run": id, "swept": {...}, <config values>, <metrics>}``.

Run again, a sweep skips the runs that ``results.jsonl`` already holds (it trains nothing
when all are done), and a run killed half-way resumes from its checkpoints. With several
processes (``jax.distributed`` or ``--process-index/--process-count``) process ``p`` of
``P`` takes the runs ``i`` with ``i % P == p``, so a pod of hosts shares a sweep without a
scheduler; appends to ``results.jsonl`` are serialised with a file lock.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from anomjax.experiment.config import get_path, parse_value, set_path
from anomjax.experiment.run import run_experiment

RESULTS_FILE = "results.jsonl"
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
        values = tuple(parse_value(t, like) for t in text.split(","))
        out[key] = values
    return out


def _axes(config: ml_collections.ConfigDict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    product = {k: tuple(v) for k, v in _flatten(config.sweep.to_dict()).items()}
    zipped = {k: tuple(v) for k, v in _flatten(config.sweep_zip.to_dict()).items()}
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


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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


def finished_runs(sweep_dir: Path) -> set[str]:
    """Ids of the runs ``results.jsonl`` holds."""
    path = sweep_dir / RESULTS_FILE
    if not path.is_file():
        return set()
    return {json.loads(line)["run"] for line in path.read_text().splitlines() if line.strip()}


def _append(sweep_dir: Path, lines: list[dict[str, Any]]) -> None:
    with open(sweep_dir / f"{RESULTS_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(sweep_dir / RESULTS_FILE, "a") as f:
            for line in lines:
                f.write(json.dumps(line, allow_nan=False, default=_jsonable) + "\n")


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
              process_index: int = 0, process_count: int = 1,
              progress: bool = True) -> Iterator[tuple[str, str]]:
    """Run this process's share of the sweep; yields ``(run id, "done" | "skipped")``."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs = expand(config)
    ids = [run_id(v) for v in runs]
    if len(set(ids)) != len(ids):
        raise ValueError("two runs of the sweep have the same id; sweep distinct values")
    done = finished_runs(sweep_dir)
    for i in process_share(len(runs), process_index, process_count):
        if ids[i] in done:
            yield ids[i], "skipped"
            continue
        cfg = run_config(config, runs[i])
        run_dir = sweep_dir / "runs" / ids[i]
        started = run_dir.is_dir() and any(run_dir.iterdir())  # a killed run: continue it
        records = run_experiment(cfg, run_dir, resume=started, progress=progress)
        recorded = {key: get_path(cfg, key) for key in RECORDED_FIELDS}
        _append(sweep_dir, [{"run": ids[i], "swept": _member_swept(runs[i], r), **recorded,
                             **{k: _finite(v) for k, v in r.items()}} for r in records])
        yield ids[i], "done"
