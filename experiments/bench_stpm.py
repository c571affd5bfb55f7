"""STPM end to end (fit + test wall time) and accuracy next to anomalib's STFPM.

Trains anomjax's STPM (EfficientNet-Lite0, taps stage2/3/5) on one MVTec-layout folder,
scores its test split with ``anomjax.evaluate.evaluate``, then (unless ``--no-ref``) runs
anomalib's STFPM with the same backbone weights, image size, epochs and batch size through
``../shared/tools/ref_anomalib.py`` in its own venv, and prints both and their ratios::

    python experiments/bench_stpm.py --data ../shared/data/mvtec3d_tire --epochs 12

``end_to_end_ratio`` = anomalib's (fit + test) wall seconds over anomjax's: anomjax's fit is
``train_method`` (teacher loading, initialisation, XLA compilation, training, the precise-BN
pass when on), its test is ``evaluate`` (loading, compilation, scoring, metrics); anomalib's
are its ``Engine.fit`` (with its default validation pass) and ``Engine.test``. Throughput is
training images per second of the training loop (data loading included, as in anomalib's
loop time); for anomjax over all steps (``with_compile``) and without the first step, which
includes the XLA compilation (``steady``). Writes a JSON record with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from anomjax.data import open_dataset
from anomjax.evaluate import evaluate
from anomjax.methods.distillation.stpm import STPM
from anomjax.train import train_method

REPO = Path(__file__).resolve().parents[1]
REF_SCRIPT = REPO.parent / "shared" / "tools" / "ref_anomalib.py"
REF_PYTHON = "/tmp/venv-anomalib/bin/python"


def run_anomjax(args: argparse.Namespace) -> dict:
    """Train and test STPM; timings from the run's metrics.jsonl."""
    ds = open_dataset(args.data, image_size=args.image_size)
    method = STPM(precise_bn=args.precise_bn)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        state = train_method(method, jax.random.key(args.seed), ds.train, epochs=args.epochs,
                             batch_size=args.batch_size, run_dir=run_dir,
                             num_workers=args.num_workers, log_every=1,
                             disable=args.quiet)
        jax.block_until_ready(state)
        fit_s = time.perf_counter() - start
        steps = [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
                 if ln]
    step_s = np.array([args.batch_size / s["train/images_per_s"] for s in steps])
    start = time.perf_counter()
    result = evaluate(method, state, ds.test, batch_size=args.batch_size, progress=False)
    test_s = time.perf_counter() - start
    metrics = {k: result[k] for k in ("image_auroc", "pixel_auroc", "pixel_aupro")}
    return {
        "train_images_per_s_with_compile": len(steps) * args.batch_size / step_s.sum(),
        "train_images_per_s_steady": (len(steps) - 1) * args.batch_size / step_s[1:].sum(),
        "first_step_s": float(step_s[0]),
        "steps": len(steps), "fit_wall_s": fit_s, "test_wall_s": test_s,
        "end_to_end_s": fit_s + test_s, "precise_bn": method.precise_bn,
        "final_loss": steps[-1]["train/loss"],
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def run_anomalib(args: argparse.Namespace) -> dict:
    """anomalib STFPM with the same settings, in its own interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ref.json"
        cmd = [args.ref_python, str(REF_SCRIPT), "--data", args.data, "--model", "stfpm",
               "--backbone", "lite0", "--image-size", str(args.image_size), "--epochs",
               str(args.epochs), "--train-batch-size", str(args.batch_size),
               "--eval-batch-size", str(args.batch_size), "--skip-backbone-check",
               "--seed", str(args.seed), "--out", str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        ref = json.loads(out.read_text())
    timing = ref["timing"]
    n_train = ref["dataset"]["n_train"]
    return {
        "train_images_per_s": n_train * args.epochs / timing["fit_train_loop_s"],
        "fit_train_loop_s": timing["fit_train_loop_s"], "fit_wall_s": timing["fit_wall_s"],
        "test_wall_s": timing["test_wall_s"],
        "end_to_end_s": timing["fit_wall_s"] + timing["test_wall_s"],
        "train_batches": timing["train_batches"],
        "metrics": {k: ref["metrics"][k] for k in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec3d_tire"))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=STPM.default_batch_size)
    p.add_argument("--precise-bn", action=argparse.BooleanOptionalAction,
                   default=STPM().precise_bn, help="recompute the student's BN statistics")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-ref", action="store_true", help="skip the anomalib run")
    p.add_argument("--ref-python", default=REF_PYTHON)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="write the JSON record here")
    args = p.parse_args()

    record = {"data": args.data, "image_size": args.image_size, "epochs": args.epochs,
              "batch_size": args.batch_size, "device": str(jax.devices()[0]),
              "cpu_count": os.cpu_count(), "anomjax": run_anomjax(args)}
    print(json.dumps({"anomjax": record["anomjax"]}, indent=1), flush=True)
    if not args.no_ref:
        record["anomalib"] = run_anomalib(args)
        record["end_to_end_ratio"] = (record["anomalib"]["end_to_end_s"]
                                      / record["anomjax"]["end_to_end_s"])
        record["throughput_ratio_steady"] = (record["anomjax"]["train_images_per_s_steady"]
                                             / record["anomalib"]["train_images_per_s"])
        record["throughput_ratio_with_compile"] = (
            record["anomjax"]["train_images_per_s_with_compile"]
            / record["anomalib"]["train_images_per_s"])
    print(json.dumps(record, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
    return None


if __name__ == "__main__":
    sys.exit(main())
