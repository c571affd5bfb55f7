"""A sweep's results as tables and plots: ``results.csv``, ``summary.md``, ``plots/``.

``results.jsonl`` (one line per run and test category) is flattened into one tidy CSV; the
Markdown summary groups runs by their swept values other than ``seed`` (and by test
category) and gives each metric's mean ± sample standard deviation over the seeds; for
every swept numeric field a plot shows each metric against it (mean over seeds, with the
standard deviation as error bars).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from anomjax.experiment.sweep import RESULTS_FILE, read_lines

#: Metrics summarised and plotted, as ``anomjax test --json`` names them.
SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1max")


def read_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``results.jsonl``, in file order (failed runs too: ``status``)."""
    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results yet (run the sweep first)")
    return read_lines(Path(sweep_dir))


def failed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of runs that failed (diverged), which no metric averages."""
    return [r for r in results if r.get("status") == "failed"]


def tidy_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per line: the swept values as ``swept.<field>`` columns, then the rest."""
    rows = []
    for r in results:
        row = {"run": r["run"]}
        row.update({f"swept.{k}": _cell(v) for k, v in r["swept"].items()})
        row.update({k: _cell(v) for k, v in r.items() if k not in ("run", "swept")})
        rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite ``values``."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def group_by_setting(results: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Lines grouped by (swept values other than seed, test category), in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        setting = tuple((k, _cell(v)) for k, v in r["swept"].items() if k != "seed")
        groups[(setting, r.get("category"))].append(r)
    return groups


def summary_markdown(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per setting, each metric as mean ± std over the seeds that
    finished (``seeds``), and under it every failed run with its error."""
    lost = failed(results)
    groups = group_by_setting([r for r in results if r not in lost])
    setting_keys = list(dict.fromkeys(k for (setting, _), _rows in groups.items()
                                      for k, _v in setting))
    header = ["method", "category", *setting_keys, "seeds", *SUMMARY_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (setting, category), rows in groups.items():
        values = dict(setting)
        cells = [str(rows[0].get("method.name", rows[0].get("method"))), str(category),
                 *(str(values.get(k, "")) for k in setting_keys), str(len(rows))]
        for metric in SUMMARY_METRICS:
            mean, std = mean_std([r.get(metric) for r in rows])
            cells.append("n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    if lost:
        lines += ["", f"**{len(lost)} failed run(s), in no mean above:**", ""]
        lines += [f"- `{r['run']}`: {r.get('error', 'no error recorded')}" for r in lost]
    return "\n".join(lines) + "\n"


def plot_metric_vs_swept(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per swept numeric field (other than seed): each metric's mean ± std over the
    other runs at each value. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if r.get("status") != "failed"]
    fields = list(dict.fromkeys(k for r in results for k in r["swept"] if k != "seed"))
    written = []
    for field in fields:
        by_value: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for r in results:
            value = r["swept"].get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                by_value[float(value)].append(r)
        if len(by_value) < 2:
            continue
        xs = sorted(by_value)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for metric in SUMMARY_METRICS:
            stats = [mean_std([r.get(metric) for r in by_value[x]]) for x in xs]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                        capsize=3, label=metric)
        ax.set(xlabel=field, ylabel="metric", title=f"metrics against {field}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{field.replace('.', '_')}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def write_report(sweep_dir: str | Path) -> dict[str, Path]:
    """Write ``results.csv``, ``summary.md`` and ``plots/*.png`` of a sweep folder."""
    sweep_dir = Path(sweep_dir)
    results = read_results(sweep_dir)
    write_csv(tidy_rows(results), sweep_dir / "results.csv")
    (sweep_dir / "summary.md").write_text(summary_markdown(results))
    plot_metric_vs_swept(results, sweep_dir / "plots")
    return {"csv": sweep_dir / "results.csv", "summary": sweep_dir / "summary.md",
            "plots": sweep_dir / "plots"}
