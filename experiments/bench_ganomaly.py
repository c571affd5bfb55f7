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
import os
import time

import jax
import numpy as np
from bench_common import bench_arguments, run_reference, timed_training, write_record

from anomjax.data import open_dataset
from anomjax.methods.generative.ganomaly import GANomaly
from anomjax.metrics import compute_metrics


def run_anomjax(args: argparse.Namespace) -> dict:
    """Train and test GANomaly; timings from the run's metrics.jsonl."""
    ds = open_dataset(args.data, image_size=args.image_size)
    method = GANomaly()
    state, timing = timed_training(method, ds.train, args)
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
    last = timing.pop("last_step")
    return {**timing, "test_wall_s": test_s, "fit_test_s": timing["fit_wall_s"] + test_s,
            "final_loss_g": last["train/loss_g"], "final_loss_d": last["train/loss_d"],
            "metrics": {k: float(v) for k, v in metrics.items()}}


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0], image_size=64, epochs=5,
                           batch_size=32).parse_args()
    record = {"data": args.data, "image_size": args.image_size, "epochs": args.epochs,
              "batch_size": args.batch_size, "device": str(jax.devices()[0]),
              "cpu_count": os.cpu_count(), "anomjax": run_anomjax(args)}
    if not args.no_ref:
        ref = run_reference(args, "ganomaly")
        record["anomalib"] = {k: ref[k] for k in ("train_images_per_s", "fit_wall_s",
                                                  "test_wall_s", "fit_test_s")}
        record["anomalib"]["metrics"] = {"image_AUROC": ref["metrics"]["image_AUROC"]}
        ours = record["anomjax"]
        record["throughput_ratio_steady"] = (ours["train_images_per_s_steady"]
                                             / ref["train_images_per_s"])
        record["throughput_ratio_with_compile"] = (ours["train_images_per_s_with_compile"]
                                                   / ref["train_images_per_s"])
        record["fit_test_speedup"] = ref["fit_test_s"] / ours["fit_test_s"]
        record["image_auroc_difference"] = (ours["metrics"]["image_auroc"]
                                            - ref["metrics"]["image_AUROC"])
    write_record(record, args.out)


if __name__ == "__main__":
    main()
