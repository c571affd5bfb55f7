"""Learning curves of trained methods against trivial baselines (issue #24).

Trains one or more ``kind == "train"`` methods on one or more categories for a budget of
optimiser steps and, through the engine's validation (``train_method(..., val_split=test,
val_steps=...)``: the state the run would return at that step, calibrated, scored with the
shared metrics), records pixel AUROC, AUPRO and image AUROC at log-spaced steps (0 = the
initial state, 25, 50, 100, 200, 500, 1000, 2000, ... and the budget) next to the mean
training loss of the steps since the previous evaluation. Next to the curve it computes the
trivial baselines of :mod:`experiments.baseline_intensity` (pixel brightness, best of both
directions, and distance from the per-pixel training mean) and, for the reconstruction and
generative methods, the reconstruction error of the normal test images against the error of
the training-mean image.

Each (method, category) pair writes ``OUT/<method>_<category>.jsonl`` (a ``config`` line, one
``eval`` line per evaluated step, a ``baselines`` line, a ``reconstruction`` line where it
applies and a ``summary`` line) and ``OUT/<method>_<category>.png``. Checkpoints and the
engine's ``metrics.jsonl`` go to ``--run-root`` (default a folder under /tmp), never to OUT.

    python experiments/learning_curves.py --methods ae vae --datasets \
        ../shared/data/magnetic_tile synthetic/nut --image-size 64 --steps 1000 \
        --batch-size 16 --set ae:width=16 [--out experiments/learning_curves]

``synthetic/<category>`` is written with :func:`anomjax.data.synthetic.write_mvtec` (its
default sizes: 40 training images, 8 good and 16 defective test images) at the image size
into ``--run-root``. A pair that raises is recorded as a ``failed`` summary line and the next
pair runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``experiments`` is a folder of scripts, not a package
    sys.path.insert(0, str(REPO))

from experiments.baseline_intensity import split_baselines  # noqa: E402
from experiments.results import method_overrides  # noqa: E402

LOG_STEPS = (25, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
RECONSTRUCTION_METHODS = ("ae", "memae", "vae", "favae", "anogan", "f_anogan", "ganomaly")
METRICS = ("pixel_auroc", "pixel_aupro", "image_auroc")
BAR = 0.05


def eval_steps(steps: int) -> list[int]:
    """0, the log-spaced steps below the budget, and the budget."""
    return sorted({0, *(s for s in LOG_STEPS if s < steps), steps})


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def trivial_baselines(ds: Any) -> dict[str, float]:
    """:func:`split_baselines` plus the two floors the bar uses: ``brightness`` (the better
    direction of raw intensity) and ``mean_distance`` (``|I - per-pixel training mean|``)."""
    out = split_baselines(ds)
    return {**out, "brightness": max(out["raw_bright"], out["raw_dark"]),
            "mean_distance": out["abs_dev_mean"]}


# ----------------------------------------------------------------- reconstructions

def _signed(images: Any) -> Any:
    return images * 2.0 - 1.0


def reconstruct(method: Any, state: Any, images: Any) -> Any:
    """The method's reconstruction ``[B, S, S, 3]`` in ``[0, 1]`` of ``images``, or ``None``
    where it has none in image space (favae reconstructs backbone features).

    The library has no public ``reconstruct``: this reaches into each method's networks the
    way its own ``score`` does (see the report of issue #24 for the proposed method)."""
    public = getattr(method, "reconstruct", None)
    if callable(public):
        return public(state, images)
    name = method.name
    if name == "ae":
        return method._net(images).apply({"params": state["params"]}, images)
    if name == "memae":
        return method._net(images).apply({"params": state["params"]}, images)[0]
    if name == "vae":
        net = method._net(images, state["params"])
        return net.apply({"params": state["params"]}, images)
    if name == "ganomaly":
        gen, _ = method._nets(images)
        x_hat = gen.apply({"params": state["params"]["generator"],
                           "batch_stats": state["batch_stats"]["generator"]},
                          _signed(images), train=False)[0]
        return (x_hat + 1.0) / 2.0
    if name == "f_anogan":
        return (method._izi_f(state["params"], state, images)[2] + 1.0) / 2.0
    if name == "anogan":
        return (method.search(state, images)[0] + 1.0) / 2.0
    return None


def reconstruction_check(method: Any, state: Any, ds: Any, batch_size: int) -> dict | None:
    """Mean squared error (per value, ``[0, 1]`` images) of the reconstruction of the normal
    and of the defective test images, against the error of the per-pixel training-mean image
    standing in for every reconstruction. A model that learned anything reconstructs the
    normal images better than the mean image does."""
    import jax

    if method.name not in RECONSTRUCTION_METHODS:
        return None
    train = ds.train.load_all(num_workers=0)
    test = ds.test.load_all(num_workers=0)
    mean_image = train.images.mean(axis=0)
    fn = jax.jit(lambda s, x: reconstruct(method, s, x))
    recons = []
    try:
        for i in range(0, len(test.images), batch_size):
            out = fn(state, np.asarray(test.images[i:i + batch_size], np.float32))
            if out is None:
                return {"available": False, "why": f"{method.name} has no image-space "
                        "reconstruction (it reconstructs backbone features)"}
            recons.append(np.asarray(out))
    except Exception as err:  # noqa: BLE001 (recorded, not fatal)
        return {"available": False, "why": f"{type(err).__name__}: {err}"}
    recon = np.concatenate(recons)
    good = np.asarray(test.labels) == 0
    err = ((recon - test.images) ** 2).mean(axis=(1, 2, 3))
    mean_err = ((mean_image[None] - test.images) ** 2).mean(axis=(1, 2, 3))
    return {"available": True,
            "recon_mse_good": float(err[good].mean()),
            "mean_image_mse_good": float(mean_err[good].mean()),
            "recon_mse_defect": float(err[~good].mean()) if (~good).any() else None,
            "mean_image_mse_defect": float(mean_err[~good].mean()) if (~good).any() else None}


# ----------------------------------------------------------------- one run

def open_category(spec: str, image_size: int, run_root: Path) -> tuple[str, Path]:
    """``(name, folder)`` of a dataset argument: a folder, or ``synthetic/<category>``."""
    from anomjax.data import synthetic

    if spec.startswith("synthetic/"):
        category = spec.split("/", 1)[1]
        if category not in synthetic.CATEGORIES:
            raise SystemExit(f"unknown synthetic category {category!r}")
        root = run_root / f"synthetic_{image_size}"
        folder = root / category
        if not (folder / "test").is_dir():
            synthetic.write_mvtec(root, categories=[category], image_size=image_size, seed=0,
                                  disable=True)
        return category, folder
    folder = Path(spec)
    if not folder.is_dir():
        raise SystemExit(f"dataset folder {folder} not found")
    return folder.name, folder


def read_engine_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """``(train lines, val lines)`` of the engine's ``metrics.jsonl``."""
    train, val = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        (val if any(k.startswith("val/") for k in record) else train).append(record)
    return train, val


def curve(train_lines: list[dict], val_lines: list[dict], steps: list[int]) -> list[dict]:
    """One record per evaluated step: the three metrics, and the mean training loss of the
    steps since the previous evaluated step (``None`` at step 0)."""
    by_step = {r["step"]: r for r in val_lines}
    losses = {r["step"]: r.get("train/loss") for r in train_lines}
    out, prev = [], 0
    for s in steps:
        record = by_step.get(s)
        if record is None:
            continue
        window = [float(v) for k, v in losses.items() if prev < k <= s and v is not None]
        out.append({"kind": "eval", "step": s,
                    "train_loss": float(np.mean(window)) if window else None,
                    **{m: record.get(f"val/{m}") for m in METRICS}})
        prev = s
    return out


def seconds_per_step(train_lines: list[dict], batch_size: int) -> float | None:
    """Median steady-state seconds per optimiser step, from the engine's throughput windows
    (they exclude compilation, checkpoint writes and validation)."""
    rates = [r["train/images_per_s"] for r in train_lines
             if isinstance(r.get("train/images_per_s"), float) and r["train/images_per_s"] > 0]
    if len(rates) > 2:
        rates = rates[1:]  # the first window includes the warm-up
    return float(batch_size / np.median(rates)) if rates else None


def run_pair(method_name: str, dataset: str, args: argparse.Namespace) -> dict:
    """Train ``method_name`` on ``dataset`` with validation at :func:`eval_steps`; write its
    JSON lines and PNG into ``args.out``; returns the summary."""
    import jax

    from anomjax.data import open_dataset
    from anomjax.methods import make_method
    from anomjax.train import train_method, train_plan

    name, folder = open_category(dataset, args.image_size, args.run_root)
    overrides = method_overrides(args.overrides, method_name)
    method = make_method(method_name, overrides)
    if method.kind != "train":
        raise SystemExit(f"{method_name} does not train (kind {method.kind!r})")
    ds = open_dataset(folder, image_size=args.image_size)
    plan = train_plan(method, len(ds.train), args.batch_size, steps=args.steps)
    steps = eval_steps(plan.total_steps) if args.val_steps is None else sorted(
        {0, *args.val_steps, plan.total_steps})
    stem = f"{method_name}_{name}"
    run_dir = args.run_root / "runs" / stem
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    config = {"kind": "config", "method": method_name, "dataset": name,
              "settings": overrides, "image_size": args.image_size,
              "batch_size": plan.global_batch_size, "steps": plan.total_steps,
              "steps_per_epoch": plan.steps_per_epoch, "n_train": len(ds.train),
              "n_test": len(ds.test), "seed": args.seed, "eval_steps": steps,
              "commit": args.commit, "devices": str(jax.devices()[0].platform)}
    print(f"== {stem}: {plan.total_steps} steps of {plan.global_batch_size}, "
          f"{plan.steps_per_epoch} per epoch, settings {overrides}", flush=True)
    if args.max_minutes:
        probe_dir = args.run_root / "probes" / stem
        if probe_dir.exists():
            import shutil

            shutil.rmtree(probe_dir)
        n_probe = min(20, plan.total_steps)
        train_method(method, jax.random.PRNGKey(args.seed), ds.train, epochs=None,
                     steps=n_probe, batch_size=plan.global_batch_size, run_dir=probe_dir,
                     num_workers=args.num_workers, disable=True)
        probe_sps = seconds_per_step(read_engine_metrics(probe_dir)[0], plan.global_batch_size)
        minutes = (probe_sps or 0.0) * plan.total_steps / 60
        print(f"   probe: {probe_sps:.3f} s/step, {minutes:.1f} min for {plan.total_steps} "
              "steps", flush=True)
        if minutes > args.max_minutes:
            summary = {"kind": "summary", "status": "skipped", "seconds_per_step": probe_sps,
                       "why": f"{probe_sps:.3f} s/step: {minutes:.0f} min for "
                              f"{plan.total_steps} steps > --max-minutes {args.max_minutes}"}
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / f"{stem}.jsonl", "w") as f:
                f.write(json.dumps(config) + "\n" + json.dumps(summary) + "\n")
            print(f"   SKIPPED {stem}: {summary['why']}", flush=True)
            return summary
    baselines = trivial_baselines(ds)
    start = time.perf_counter()
    state = train_method(method, jax.random.PRNGKey(args.seed), ds.train, epochs=None,
                         steps=plan.total_steps, batch_size=plan.global_batch_size,
                         run_dir=run_dir, val_split=ds.test, val_steps=steps,
                         num_workers=args.num_workers, disable=not args.progress)
    jax.block_until_ready(state)
    wall = time.perf_counter() - start
    train_lines, val_lines = read_engine_metrics(run_dir)
    records = curve(train_lines, val_lines, steps)
    recon = reconstruction_check(method, state, ds, plan.global_batch_size)
    final, first = records[-1], records[0]
    sps = seconds_per_step(train_lines, plan.global_batch_size)
    floor = max(first["pixel_auroc"], baselines["brightness"], baselines["mean_distance"])
    summary = {"kind": "summary", "status": "ok", "wall_s": wall, "seconds_per_step": sps,
               "step0_pixel_auroc": first["pixel_auroc"],
               "final_step": final["step"],
               **{f"final_{m}": final[m] for m in METRICS},
               "best_pixel_auroc": max(r["pixel_auroc"] for r in records),
               "bar": floor + BAR, "cleared": bool(final["pixel_auroc"] >= floor + BAR)}
    lines = [config, *records, {"kind": "baselines", **baselines}]
    if recon is not None:
        lines.append({"kind": "reconstruction", **recon})
    lines.append(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{stem}.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    plot(args.out / f"{stem}.png", config, records, baselines, train_lines, summary)
    print(f"   step-0 pixel AUROC {first['pixel_auroc']:.3f} -> {final['pixel_auroc']:.3f} "
          f"(AUPRO {final['pixel_aupro']:.3f}, image {final['image_auroc']:.3f}); "
          f"brightness {baselines['brightness']:.3f}, mean distance "
          f"{baselines['mean_distance']:.3f}; {sps or float('nan'):.3f} s/step; "
          f"cleared {summary['cleared']}", flush=True)
    return summary


def plot(path: Path, config: dict, records: list[dict], baselines: dict,
         train_lines: list[dict], summary: dict) -> None:
    """Metrics against steps (symlog x) with the baselines as horizontal lines; training
    loss beside them. Small (about 40 KB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, lx) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    steps = [r["step"] for r in records]
    for m, style in zip(METRICS, ("o-", "s--", "^:"), strict=True):
        ax.plot(steps, [r[m] for r in records], style, label=m, ms=4)
    ax.axhline(baselines["brightness"], color="tab:gray", lw=1, ls="-.",
               label=f"brightness {baselines['brightness']:.2f}")
    ax.axhline(baselines["mean_distance"], color="k", lw=1, ls="--",
               label=f"|I - train mean| {baselines['mean_distance']:.2f}")
    ax.axhline(records[0]["pixel_auroc"], color="tab:red", lw=1, ls=":",
               label=f"step 0 pixel {records[0]['pixel_auroc']:.2f}")
    ax.set_xscale("symlog", linthresh=25)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1)
    ax.set_xlabel("optimiser step")
    ax.set_title(f"{config['method']} on {config['dataset']} "
                 f"({config['image_size']} px, bs {config['batch_size']})", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    xs = [r["step"] for r in train_lines if isinstance(r.get("train/loss"), float)]
    ys = [r["train/loss"] for r in train_lines if isinstance(r.get("train/loss"), float)]
    if xs:
        lx.plot(xs, ys, lw=0.5, alpha=0.4, color="tab:blue")
        k = max(1, len(ys) // 50)
        if k > 1:
            smooth = np.convolve(ys, np.ones(k) / k, mode="valid")
            lx.plot(xs[k - 1:], smooth, lw=1.2, color="tab:blue")
    lx.set_xscale("symlog", linthresh=25)
    lx.set_xlim(left=0)
    lx.set_xlabel("optimiser step")
    lx.set_title(f"training loss; {summary['seconds_per_step'] or float('nan'):.3f} s/step",
                 fontsize=9)
    lx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------- the table

def fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe(method_name: str, settings: dict[str, str]) -> str:
    """The overrides, and every width-like field of the method as it ran."""
    import dataclasses

    from anomjax.methods import make_method

    method = make_method(method_name, settings)
    sizes = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)
             if any(w in f.name for w in ("width", "hidden", "fc_internal", "latent"))}
    cells = {**sizes, **settings}
    return ", ".join(f"{k}={v}" for k, v in cells.items()) or "defaults"


def table(out: Path, notes: dict[str, str] | None = None) -> str:
    """The markdown table of every ``OUT/*.jsonl`` (one row per method and category)."""
    notes = notes or {}
    rows = ["| method | category | width / settings | batch | steps | s/step | step-0 pixel "
            "AUROC | final pixel AUROC | AUPRO | image AUROC | brightness | \\|I - mean\\| "
            "| recon MSE good (mean image) | cleared | curve | notes |",
            "|" + "---|" * 16]
    for path in sorted(out.glob("*.jsonl")):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        by_kind = {line["kind"]: line for line in lines}
        config, summary = by_kind.get("config"), by_kind.get("summary")
        if config is None or summary is None:
            continue
        if summary.get("status") != "ok":
            rows.append(f"| {config['method']} | {config['dataset']} | "
                        + ", ".join(f"{k}={v}" for k, v in config["settings"].items())
                        + f" | {config['batch_size']} | - | {fmt(summary.get('seconds_per_step'))}"
                        + " | - | - | - | - | - | - | - | not run | - | "
                        + f"{summary['status']}: {summary.get('why', summary.get('error'))}; "
                        + f"{notes.get(path.stem, '')} |")
            continue
        base, recon = by_kind["baselines"], by_kind.get("reconstruction")
        settings = describe(config["method"], config["settings"])
        if recon is None:
            rec = "n/a"
        elif not recon.get("available"):
            rec = "none in image space"
        else:
            rec = f"{recon['recon_mse_good']:.4f} ({recon['mean_image_mse_good']:.4f})"
        stem = path.stem
        rows.append(
            f"| {config['method']} | {config['dataset']} | {settings} | {config['batch_size']} "
            f"| {summary['final_step']} | {fmt(summary['seconds_per_step'])} "
            f"| {fmt(summary['step0_pixel_auroc'])} | {fmt(summary['final_pixel_auroc'])} "
            f"| {fmt(summary['final_pixel_aupro'])} | {fmt(summary['final_image_auroc'])} "
            f"| {fmt(base['brightness'])} | {fmt(base['mean_distance'])} | {rec} "
            f"| {'yes' if summary['cleared'] else 'no'} "
            f"| [png](learning_curves/{stem}.png) | {notes.get(stem, '')} |")
    return "\n".join(rows)


# ----------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=[])
    parser.add_argument("--datasets", nargs="+", default=[],
                        help="category folders, or synthetic/<category>")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000, help="optimiser-step budget")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--val-steps", type=int, nargs="+", default=None,
                        help="evaluated steps (default: 0, 25, 50, 100, 200, 500, 1000, ... "
                             "below the budget, and the budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="METHOD:KEY=VALUE", help="hyper-parameter override, repeatable")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "learning_curves")
    parser.add_argument("--run-root", type=Path, default=Path("/tmp/anomjax_learning_curves"),
                        help="checkpoints, engine logs and synthetic data (not kept)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="first train 20 steps; skip the pair (recorded as skipped) if "
                             "the budget would take more training minutes than this")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    parser.add_argument("--table", action="store_true",
                        help="print the markdown table of the JSON lines in --out and exit")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the PNGs of --out from the engine logs in --run-root")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failing pair and go on (default: raise)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.table:
        print(table(args.out))
        return []
    if args.replot:
        for path in sorted(args.out.glob("*.jsonl")):
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            by_kind = {line["kind"]: line for line in lines}
            run_dir = args.run_root / "runs" / path.stem
            if by_kind.get("summary", {}).get("status") == "ok" and run_dir.is_dir():
                plot(path.with_suffix(".png"), by_kind["config"],
                     [x for x in lines if x["kind"] == "eval"], by_kind["baselines"],
                     read_engine_metrics(run_dir)[0], by_kind["summary"])
        return []
    args.run_root.mkdir(parents=True, exist_ok=True)
    # The code this process imports is the tree of now, even if HEAD moves during the queue.
    args.commit = git_commit()
    summaries = []
    for method_name in args.methods:
        for dataset in args.datasets:
            try:
                summaries.append(run_pair(method_name, dataset, args))
            except Exception as err:
                if not args.keep_going:
                    raise
                traceback.print_exc()
                summaries.append({"kind": "summary", "status": "failed", "method": method_name,
                                  "dataset": dataset, "error": f"{type(err).__name__}: {err}"})
                print(f"   FAILED {method_name} {dataset}: {err}", flush=True)
    return summaries


if __name__ == "__main__":
    main()
