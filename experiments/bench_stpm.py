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
import os
import sys
import time

import jax
from bench_common import bench_arguments, run_reference, timed_training, write_record

from anomjax.data import open_dataset
from anomjax.evaluate import evaluate
from anomjax.methods.distillation.stpm import STPM

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def run_anomjax(args: argparse.Namespace) -> dict:
    """Train and test STPM; timings from the run's metrics.jsonl."""
    ds = open_dataset(args.data, image_size=args.image_size)
    method = STPM(precise_bn=args.precise_bn)
    state, timing = timed_training(method, ds.train, args)
    start = time.perf_counter()
    result = evaluate(method, state, ds.test, batch_size=args.batch_size, progress=False)
    test_s = time.perf_counter() - start
    last = timing.pop("last_step")
    return {**timing, "test_wall_s": test_s, "end_to_end_s": timing["fit_wall_s"] + test_s,
            "precise_bn": method.precise_bn, "final_loss": last["train/loss"],
            "metrics": {k: float(result[k])
                        for k in ("image_auroc", "pixel_auroc", "pixel_aupro")}}


def main() -> None:
    p = bench_arguments(__doc__.split("\n")[0], image_size=256, epochs=3,
                        batch_size=STPM.default_batch_size)
    p.add_argument("--precise-bn", action=argparse.BooleanOptionalAction,
                   default=STPM().precise_bn, help="recompute the student's BN statistics")
    args = p.parse_args()
    record = {"data": args.data, "image_size": args.image_size, "epochs": args.epochs,
              "batch_size": args.batch_size, "device": str(jax.devices()[0]),
              "cpu_count": os.cpu_count(), "anomjax": run_anomjax(args)}
    if not args.no_ref:
        ref = run_reference(args, "stfpm", ("--backbone", "lite0"))
        record["anomalib"] = {"train_images_per_s": ref["train_images_per_s"],
                              "fit_wall_s": ref["fit_wall_s"], "test_wall_s": ref["test_wall_s"],
                              "end_to_end_s": ref["fit_test_s"],
                              "metrics": {k: ref["metrics"][k] for k in METRICS},
                              "on_our_masks": ref["on_our_masks"]}
        ours = record["anomjax"]
        record["end_to_end_ratio"] = ref["fit_test_s"] / ours["end_to_end_s"]
        record["throughput_ratio_steady"] = (ours["train_images_per_s_steady"]
                                             / ref["train_images_per_s"])
        record["throughput_ratio_with_compile"] = (ours["train_images_per_s_with_compile"]
                                                   / ref["train_images_per_s"])
    write_record(record, args.out)


if __name__ == "__main__":
    sys.exit(main())
