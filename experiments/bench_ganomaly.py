"""GANomaly training throughput, fit+test time and image AUROC next to anomalib 2.7's GANomaly.

Trains anomjax's GANomaly on one MVTec-layout folder and scores its test split, then (unless
``--no-ref``) runs anomalib's GANomaly through ``../shared/tools/ref_anomalib.py`` in its own
venv with the same folder, image size, epochs and batch size (both: width 64, latent 100,
Adam 2e-4 / (0.5, 0.999), loss weights 1 / 50 / 1), and prints both and their ratios::

    python experiments/bench_ganomaly.py --data ../shared/data/mvtec3d_tire --image-size 64 \
        --epochs 5

Throughput is training images per second of the training loop (data loading included, as in
anomalib's loop time): for anomjax over all steps (``with_compile``) and without the first
step, which includes the XLA compilation (``steady``). "fit+test" is wall time of training
plus scoring the test split (anomalib: ``Engine.fit`` + ``Engine.test``; its fit also runs a
validation pass over the test images). A diverging run stops with ``TrainingDiverged`` (the
NaN guard); ``final_loss_d`` near 0 with a growing ``loss_g`` shows a collapsed
discriminator. Writes a JSON record with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from anomjax.data import open_dataset
from anomjax.methods.generative.ganomaly import GANomaly
from anomjax.metrics import compute_metrics
from anomjax.train import train_method

REPO = Path(__file__).resolve().parents[1]
REF_SCRIPT = REPO.parent / "shared" / "tools" / "ref_anomalib.py"
REF_PYTHON = "/tmp/venv-anomalib/bin/python"


def run_anomjax(args: argparse.Namespace) -> dict:
    """Train and test GANomaly; timings from the run's metrics.jsonl."""
    ds = open_dataset(args.data, image_size=args.image_size)
    method = GANomaly()
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
    score = jax.jit(method.score)
    start = time.perf_counter()
    images, labels, maps, masks = [], [], [], []
    for batch in ds.test.batches(batch_size=args.batch_size, num_workers=args.num_workers):
        out = score(state, batch.images)
        images.append(np.asarray(out.image))
        maps.append(np.asarray(out.maps))
        labels.append(batch.labels)
        masks.append(batch.masks)
    test_s = time.perf_counter() - start
    metrics = compute_metrics(np.concatenate(images), np.concatenate(labels),
                              np.concatenate(maps), np.concatenate(masks))
    return {
        "train_images_per_s_with_compile": len(steps) * args.batch_size / step_s.sum(),
        "train_images_per_s_steady": (len(steps) - 1) * args.batch_size / step_s[1:].sum(),
        "first_step_s": float(step_s[0]), "steps": len(steps),
        "fit_wall_s": fit_s, "test_wall_s": test_s, "fit_test_s": fit_s + test_s,
        "final_loss_g": steps[-1]["train/loss_g"], "final_loss_d": steps[-1]["train/loss_d"],
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def run_anomalib(args: argparse.Namespace) -> dict:
    """anomalib GANomaly with the same settings, in its own interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ref.json"
        cmd = [args.ref_python, str(REF_SCRIPT), "--data", args.data, "--model", "ganomaly",
               "--image-size", str(args.image_size), "--epochs", str(args.epochs),
               "--train-batch-size", str(args.batch_size), "--eval-batch-size",
               str(args.batch_size), "--skip-backbone-check", "--seed", str(args.seed),
               "--out", str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        ref = json.loads(out.read_text())
    timing = ref["timing"]
    n_train = ref["dataset"]["n_train"]
    return {
        "train_images_per_s": n_train * args.epochs / timing["fit_train_loop_s"],
        "fit_train_loop_s": timing["fit_train_loop_s"], "fit_wall_s": timing["fit_wall_s"],
        "test_wall_s": timing["test_wall_s"],
        "fit_test_s": timing["fit_wall_s"] + timing["test_wall_s"],
        "train_batches": timing["train_batches"],
        "metrics": {"image_AUROC": ref["metrics"]["image_AUROC"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec3d_tire"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
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
        ref = record["anomalib"] = run_anomalib(args)
        ours = record["anomjax"]
        record["throughput_ratio_steady"] = ours["train_images_per_s_steady"] / ref[
            "train_images_per_s"]
        record["throughput_ratio_with_compile"] = ours["train_images_per_s_with_compile"] / ref[
            "train_images_per_s"]
        record["fit_test_speedup"] = ref["fit_test_s"] / ours["fit_test_s"]
        record["image_auroc_difference"] = (ours["metrics"]["image_auroc"]
                                            - ref["metrics"]["image_AUROC"])
        print(json.dumps({k: record[k] for k in ("anomalib", "throughput_ratio_steady",
                                                 "throughput_ratio_with_compile",
                                                 "fit_test_speedup", "image_auroc_difference")},
                         indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
