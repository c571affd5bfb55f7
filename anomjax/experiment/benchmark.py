"""The benchmark protocol: every category of a dataset root, per category and the mean.

``run_benchmark`` sweeps each method over the category folders of ``root`` (MVTec AD's 15,
VisA's 12, or any folder of MVTec-style categories) with :mod:`anomjax.experiment.sweep`,
so it resumes after a kill and shares the work between processes, and writes
``OUT/benchmark.md``: one row per (method, category) with the columns of
``experiments/RESULTS.md``, and a mean row per method, as the papers' tables report them.
The mean names the categories it is over; a sub-folder that cannot be read as a category
(no test split, no ground truth, ...) is listed under the table with the reason (and on
stderr by ``anomjax benchmark``), and a run that failed is listed too, never averaged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from anomjax.data.errors import DataError
from anomjax.data.layouts import discover
from anomjax.experiment.config import base_config
from anomjax.experiment.report import failed, mean_std, read_results
from anomjax.experiment.sweep import run_sweep

COLUMNS = ("method", "dataset/category", "backbone", "image size", "epochs", "image AUROC",
           "pixel AUROC", "AUPRO", "fit s", "test s", "peak memory MB")


def category_folders(root: str | Path, layout: str | None = None,
                     only: Sequence[str] = ()) -> tuple[list[Path], dict[str, str]]:
    """``(readable category folders, {unreadable sub-folder: reason})`` of ``root`` (sorted
    by name), or of the categories named in ``only`` (a named one that is missing or
    unreadable is an error). Empty sub-folders and stray files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root not found")
    found, skipped = [], {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if only and sub.name not in set(only) or not any(sub.iterdir()):
            continue
        try:
            discover(sub, layout)
        except DataError as err:
            skipped[sub.name] = str(err)
            continue
        found.append(sub)
    if only:
        missing = sorted(set(only) - {p.name for p in found})
        if missing:
            reasons = "; ".join(f"{m}: {skipped.get(m, 'no such folder')}" for m in missing)
            raise FileNotFoundError(f"{root}: cannot read the categories {missing} ({reasons})")
    if not found:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise FileNotFoundError(f"{root}: no category folders found (expected sub-folders "
                                f"laid out like MVTec AD, VisA, ...){f' ({why})' if why else ''}")
    return found, skipped


def benchmark_config(method: str, folders: Sequence[Path],
                     protocol: ml_collections.ConfigDict | None = None,
                     overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of one method's benchmark: ``protocol`` fields, ``overrides``, and the
    category folders as a zipped sweep over ``data``."""
    fields = {k: v for k, v in (protocol or {}).items() if k != "categories"}
    fields.update(overrides or {})
    config = base_config(method, **fields)
    with config.unlocked():
        config.sweep_zip = {"data": tuple(str(f) for f in folders)}
    return config


def run_benchmark(root: str | Path, methods: Sequence[str], out: str | Path, *,
                  protocol: ml_collections.ConfigDict | None = None,
                  overrides: dict[str, Any] | None = None, process_index: int = 0,
                  process_count: int = 1, progress: bool = True) -> Iterator[tuple[str, str]]:
    """Run (or resume) every method on every category; yields ``(method/run id, status)``."""
    out = Path(out)
    only = tuple(protocol.get("categories", ())) if protocol else ()
    folders, skipped = category_folders(root, (overrides or {}).get("layout"), only)
    for method in methods:
        config = benchmark_config(method, folders, protocol, overrides)
        for run, status in run_sweep(config, out / method, process_index=process_index,
                                     process_count=process_count, progress=progress):
            yield f"{method}/{run}", status
    if process_index == 0:
        write_benchmark_table(out, methods, Path(root).name, skipped)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_benchmark_table(out: Path, methods: Sequence[str], dataset: str,
                          skipped: dict[str, str] | None = None) -> Path:
    """``OUT/benchmark.md`` from the methods' ``results.jsonl``: finished runs in the table
    and the means, failed runs and ``skipped`` categories listed under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    notes = [f"- skipped category `{name}`: {reason}" for name, reason in
             (skipped or {}).items()]
    for method in methods:
        if not (out / method / "results.jsonl").is_file():
            continue
        results = read_results(out / method)
        notes += [f"- {method}: run `{r['run']}` failed, in no mean: {r.get('error')}"
                  for r in failed(results)]
        rows = [r for r in results if r.get("status") != "failed"]
        for r in rows:
            lines.append("| " + " | ".join([
                method, f"{dataset}/{r['category']}", str(r.get("backbone")),
                str(r.get("image_size")), _fmt(r.get("epochs")) if r.get("epochs") else "-",
                _fmt(r.get("image_auroc")), _fmt(r.get("pixel_auroc")),
                _fmt(r.get("pixel_aupro")), _fmt(r.get("fit_seconds"), 1),
                _fmt(r.get("test_seconds"), 1), _fmt(r.get("peak_rss_mb"), 0)]) + " |")
        means = {k: mean_std([r.get(k) for r in rows])[0] for k in
                 ("image_auroc", "pixel_auroc", "pixel_aupro", "fit_seconds", "test_seconds")}
        lines.append("| " + " | ".join([
            f"**{method}**", f"**{dataset} mean of {len(rows)}: "
            f"{', '.join(str(r['category']) for r in rows)}**", "", "", "",
            _fmt(means["image_auroc"]), _fmt(means["pixel_auroc"]), _fmt(means["pixel_aupro"]),
            _fmt(means["fit_seconds"], 1), _fmt(means["test_seconds"], 1), ""]) + " |")
    if notes:
        lines += ["", "Not in the table:", "", *notes]
    path = out / "benchmark.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
