"""anomjax against anomalib 2.7 (PyTorch) on one MVTec-layout folder, in one run.

For each method (PatchCore at a 1 % coreset, PaDiM) both libraries fit on ``train/good`` and
test on ``test/`` with EfficientNet-Lite0 (the same ImageNet weights) at the same image size,
each in its own process so that peak RSS is its own. anomalib runs through
``../shared/tools/ref_anomalib.py`` in its own venv. Prints fit and test seconds, peak
memory, the CPU seconds of each whole process (user + system, less sensitive than wall time
to other load on the machine; they include the work after the timings: the map dump, and
anomjax PatchCore's bfloat16-bank check), image/pixel AUROC and AUPRO, and the ratios; ``--out``
keeps the JSON records.

    python experiments/bench_vs_anomalib.py --data ../shared/data/mvtec3d_tire

Test seconds are the whole ``evaluate`` call (scoring and the test set's metrics; the
per-defect breakdown, which anomalib does not compute, is off) against anomalib's
``Engine.test`` (its evaluator's metrics included); the runs
recorded up to 2026-12-01 21:12 UTC gave anomjax's scoring seconds only, without its metrics
(``scoring_s`` now). Settings that differ between the libraries (printed with the table):
anomalib's ``fit`` includes one validation pass over the test set (its default). Both
libraries' Lite0 PaDiM tap the same blocks (anomalib's timm blocks 1/2/4 are anomjax's
``stage2``/``3``/``5``); anomalib keeps 100 random channels by default, anomjax all 176.
``--padim-dims 54,100,176`` runs both libraries' PaDiM once per ``d``.

anomalib resizes the decoded image as floats (torchvision on tensors); anomjax's reader
resizes the 8-bit image by default (the authors' PIL pipelines). The benchmark reads with
``--resize-dtype float32`` by default so that both libraries see the same pixels. It also
compares the two libraries' anomaly maps of each test image (aligned by path): the median
per-image Pearson correlation, the median relative difference, and the Spearman correlation
of the image scores, so that a metric gap can be told from a map difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_common import REF_PYTHON, REF_SCRIPT, on_our_masks

from anomjax.data.transforms import RESIZE_DTYPES

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def run_anomjax(method_name: str, data: str, image_size: int, coreset_ratio: float,
                batch_size: int, seed: int, n_features: int, resize_dtype: str,
                maps_out: Path) -> dict:
    """Fit and evaluate one anomjax method in this process; timings, memory, metrics. The
    test maps are written to ``maps_out`` (``.npz``) after the timings."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from anomjax.data import open_dataset
    from anomjax.evaluate import evaluate, predict_split
    from anomjax.methods import make_method

    fields = {"coreset_ratio": coreset_ratio, "progress": False} if method_name == "patchcore" \
        else {}
    if n_features:
        fields["n_features"] = n_features
    method = make_method(method_name, **fields)
    ds = open_dataset(data, image_size=image_size, resize_dtype=resize_dtype)
    start = time.perf_counter()
    state = method.fit(jax.random.key(seed), ds.train.batches(batch_size))
    jax.block_until_ready(state)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    # Scoring and the test set's metrics, as anomalib's Engine.test (which has no per-defect
    # breakdown: evaluate's is left out).
    result = evaluate(method, state, ds.test, batch_size=batch_size, per_defect=False,
                      progress=False)
    test_s = time.perf_counter() - start
    record = {"library": "anomjax", "method": method_name, "fit_s": round(fit_s, 2),
              "test_s": round(test_s, 2), "scoring_s": round(result["test_seconds"], 2),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "image_auroc": result["image_auroc"], "pixel_auroc": result["pixel_auroc"],
              "pixel_aupro": result["pixel_aupro"], "n_train": len(ds.train),
              "n_test": result["n_test"], "settings": {"image_size": image_size,
                                                       "batch_size": batch_size,
                                                       "resize_dtype": resize_dtype, **fields},
              "maps": str(maps_out)}
    if method_name == "patchcore":  # accuracy cost of a bfloat16 bank (after the timings)
        half = dataclasses.replace(method, bank_dtype="bfloat16")
        half_state = dict(state, bank=state["bank"].astype(jnp.bfloat16))
        half_result = evaluate(half, half_state, ds.test, batch_size=batch_size, progress=False)
        record["bf16_bank_minus_fp32"] = {k: half_result[k] - result[k] for k in METRICS}
    predict_split(method, state, ds.test, batch_size=batch_size, progress=False).save(maps_out)
    return record


def run_anomalib(method_name: str, data: str, image_size: int, coreset_ratio: float,
                 python: str, weights: str, out_dir: Path, n_features: int = 0) -> dict:
    """Run ``ref_anomalib.py`` in anomalib's venv and read its JSON record (``n_features``:
    PaDiM's d, 0 = anomalib's default); its test maps are dumped after its timings."""
    tag = method_name + (f"_d{n_features}" if n_features else "")
    out = out_dir / f"anomalib_{tag}.json"
    maps_dir = out_dir / f"anomalib_{tag}_maps"
    cmd = [python, str(REF_SCRIPT), "--data", data, "--model", method_name, "--backbone",
           "lite0", "--image-size", str(image_size), "--skip-backbone-check", "--weights",
           weights, "--out", str(out), "--dump-maps", str(maps_dir)]
    if method_name == "patchcore":
        cmd += ["--coreset-ratio", str(coreset_ratio)]
    if n_features:
        cmd += ["--n-features", str(n_features)]
    proc, cpu_s = _timed_run(cmd)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"anomalib {method_name} failed:\n{proc.stderr[-3000:]}")
    rec = json.loads(out.read_text())
    timing, metrics = rec["timing"], rec["metrics"]
    return {"library": "anomalib", "method": method_name, "fit_s": timing["fit_wall_s"],
            "test_s": timing["test_wall_s"], "peak_rss_mb": rec["memory"]["peak_rss_mib"],
            "image_auroc": metrics["image_AUROC"], "pixel_auroc": metrics["pixel_AUROC"],
            "pixel_aupro": metrics["pixel_AUPRO"], "n_train": rec["dataset"]["n_train"],
            "n_test": rec["dataset"]["n_test"], "process_cpu_s": cpu_s, "record": str(out),
            "settings": {"n_features": n_features} if n_features else {},
            "maps": rec.get("dump")}


def map_agreement(ours_npz: str, peer_npz: str) -> dict:
    """How alike two libraries' test maps are, image by image (aligned by resolved path):
    median and minimum per-image Pearson correlation, the median of ``|a - b| / |b|`` over
    all pixels and the Spearman correlation of the two libraries' image scores; plus
    :func:`bench_common.on_our_masks` (anomalib's maps against anomjax's masks, and how
    often the two libraries' masks differ)."""
    import numpy as np

    ours, peer = np.load(ours_npz), np.load(peer_npz)
    index = {os.path.realpath(p): i for i, p in enumerate(ours["paths"])}
    order = [index[os.path.realpath(p)] for p in peer["image_paths"]]
    a = ours["maps"][order].astype(np.float64)
    b = peer["anomaly_maps"].astype(np.float64)
    corr = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b, strict=True)]

    def ranks(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(v)).astype(np.float64)

    spearman = np.corrcoef(ranks(ours["image_scores"][order]), ranks(peer["pred_scores"]))[0, 1]
    masks = on_our_masks(peer_npz, {os.path.realpath(p): m
                                    for p, m in zip(ours["paths"], ours["masks"], strict=True)})
    return {"map_pearson_median": float(np.median(corr)), "map_pearson_min": float(min(corr)),
            "map_rel_diff_median": float(np.median(np.abs(a - b) / np.abs(b))),
            "image_score_spearman": float(spearman), "mask_mismatch": masks["mask_mismatch"],
            "anomalib_on_our_masks": masks["metrics"]}


def _timed_run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd``; also return the CPU seconds (user + system) its process tree used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, round(cpu, 1)


def child(args: argparse.Namespace) -> None:
    record = run_anomjax(args.child, args.data, args.image_size, args.coreset_ratio,
                         args.batch_size, args.seed, args.n_features, args.resize_dtype,
                         Path(args.maps_out))
    print("RECORD " + json.dumps(record), flush=True)


def pairs(records: list[dict]) -> list[tuple[str, dict, dict]]:
    """``(label, anomjax record, anomalib record)`` of each method (and PaDiM d) run by both."""
    found = []
    for ours in [r for r in records if r["library"] == "anomjax"]:
        d = ours["settings"].get("n_features", 0)
        peer = next((r for r in records if r["method"] == ours["method"]
                     and r["library"] == "anomalib"
                     and r["settings"].get("n_features", 0) == d), None)
        if peer is not None:
            found.append((ours["method"] + (f" d={d}" if d else ""), ours, peer))
    return found


def table(records: list[dict]) -> str:
    """Markdown table of the runs, then one line of ratios per method (and, where
    ``map_agreement`` was added to the anomjax record, how alike the maps are)."""
    lines = ["| method | library | fit s | test s | fit+test s | process CPU s | peak RSS MiB "
             "| image AUROC | pixel AUROC | AUPRO |", "|---" * 10 + "|"]
    for r in records:
        label = r["method"] + (f" d={r['settings']['n_features']}"
                               if r.get("settings", {}).get("n_features") else "")
        lines.append(f"| {label} | {r['library']} | {r['fit_s']:.1f} | {r['test_s']:.1f} | "
                     f"{r['fit_s'] + r['test_s']:.1f} | {r['process_cpu_s']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | "
                     f"{r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['pixel_aupro']:.4f} |")
    lines.append("")
    for r in records:
        if "bf16_bank_minus_fp32" in r:
            lines.append("- anomjax patchcore with a bfloat16 bank, minus float32: " + ", ".join(
                f"{k} {100 * v:+.2f} pt" for k, v in r["bf16_bank_minus_fp32"].items()))
    for method, ours, peer in pairs(records):
        speed = (peer["fit_s"] + peer["test_s"]) / (ours["fit_s"] + ours["test_s"])
        deltas = ", ".join(f"{k} {100 * (ours[k] - peer[k]):+.1f} pt"
                           for k in METRICS)
        lines.append(f"- {method}: fit+test {speed:.2f}x faster (fit "
                     f"{peer['fit_s'] / ours['fit_s']:.2f}x, test "
                     f"{peer['test_s'] / ours['test_s']:.2f}x; process CPU "
                     f"{peer['process_cpu_s'] / ours['process_cpu_s']:.2f}x less), peak memory "
                     f"{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x of anomalib's; "
                     f"anomjax - anomalib: {deltas}")
        if "map_agreement" in ours:
            agree = ours["map_agreement"]
            lines.append(f"  - {method} maps, anomjax against anomalib: per-image Pearson "
                         f"median {agree['map_pearson_median']:.4f} (min "
                         f"{agree['map_pearson_min']:.4f}), median relative difference "
                         f"{agree['map_rel_diff_median']:.4f}, image-score Spearman "
                         f"{agree['image_score_spearman']:.4f}; ground-truth masks differ on "
                         f"{100 * agree['mask_mismatch']:.1f} % of the defect pixels")
            lines.append(f"  - {method}, anomalib's maps against anomjax's masks: " + ", ".join(
                f"{k} {v:.4f}" for k, v in agree["anomalib_on_our_masks"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MVTec-layout category folder")
    parser.add_argument("--methods", default="patchcore,padim")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anomalib-python", default=REF_PYTHON)
    parser.add_argument("--weights", default=None,
                        help="Lite0 .pth for anomalib (default: the file anomjax itself loads)")
    parser.add_argument("--skip-anomalib", action="store_true")
    parser.add_argument("--padim-dims", default="",
                        help="comma-separated PaDiM d values to run (default: the method's)")
    parser.add_argument("--resize-dtype", choices=RESIZE_DTYPES, default="float32",
                        help="anomjax's reader (default float32: the pixels anomalib sees)")
    parser.add_argument("--n-features", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--maps-out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="/tmp/bench_vs_anomalib",
                        help="folder for the JSON records")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from anomjax.backbones import find_weights

    weights = args.weights or str(find_weights("efficientnet_lite0"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    dims = [int(d) for d in args.padim_dims.split(",") if d] or [0]
    for method in [m for m in args.methods.split(",") if m]:
        for d in dims if method == "padim" else [0]:
            cmd = [sys.executable, __file__, "--child", method, "--data", args.data,
                   "--image-size", str(args.image_size), "--coreset-ratio",
                   str(args.coreset_ratio), "--batch-size", str(args.batch_size), "--seed",
                   str(args.seed), "--n-features", str(d), "--resize-dtype", args.resize_dtype,
                   "--maps-out", str(out_dir / f"anomjax_{method}_d{d}_maps.npz")]
            proc, cpu_s = _timed_run(cmd)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RECORD ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"anomjax {method} failed:\n{proc.stderr[-3000:]}")
            records.append(dict(json.loads(lines[-1][len("RECORD "):]), process_cpu_s=cpu_s))
            print(f"anomjax {method}: {records[-1]}", file=sys.stderr, flush=True)
            if not args.skip_anomalib:
                records.append(run_anomalib(method, args.data, args.image_size,
                                            args.coreset_ratio, args.anomalib_python, weights,
                                            out_dir, d))
                print(f"anomalib {method}: {records[-1]}", file=sys.stderr, flush=True)
    for _, ours, peer in pairs(records):
        if ours.get("maps") and peer.get("maps"):
            ours["map_agreement"] = map_agreement(ours["maps"], peer["maps"])
    (out_dir / "records.json").write_text(json.dumps(records, indent=2))
    print(f"\n{Path(args.data).name}, EfficientNet-Lite0, {args.image_size}x{args.image_size}, "
          f"PatchCore coreset {args.coreset_ratio}, resize {args.resize_dtype}, "
          f"{os.cpu_count()} CPU cores\n")
    print(table(records))


if __name__ == "__main__":
    main()
