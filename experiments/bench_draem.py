"""DRAEM training throughput, fit + test time, AUROCs and peak memory: anomjax vs anomalib 2.7.

    python experiments/bench_draem.py [--data ../shared/data/mvtec3d_tire] [--image-size 64]
        [--batch-size 8] [--epochs 1] [--out /tmp/bench_draem.json] [--no-ref]

Both sides train the full-width DRAEM (reconstructive width 128, discriminative 64, Adam
1e-4) on the same folder, image size, batch size and epochs, with the same anomaly source:
the procedural textures anomjax uses by default (:func:`anomjax.data.anomalies.
synthetic_textures`) are written to a folder that anomalib's ``dtd_dir`` and anomjax's
``texture_dir`` both read (anomalib has no DTD offline either; without a folder it blends
Perlin noise only). anomjax runs first in this process, anomalib then in its own
interpreter, so each peak memory (maximum resident set, MiB) is its own side's. anomalib's
fit time includes one validation pass over the test images (its default). Throughput is
training images per second of the training loop: over all steps (``with_compile``, as
anomalib's loop time includes its first step) and without anomjax's first, compiling step
(``steady``); anomjax's test time is :func:`anomjax.evaluate.evaluate`'s own. Ratios:
anomjax over anomalib for throughput, anomalib over anomjax for times and memory (above 1 =
anomjax better); AUROC differences are anomjax minus anomalib.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
from bench_common import bench_arguments, run_reference, timed_training, write_record

from anomjax.data import open_dataset
from anomjax.evaluate import evaluate, peak_rss_mb
from anomjax.methods.self_supervised import DRAEM


def write_textures(folder: Path, size: int) -> Path:
    """The default anomjax anomaly source as JPEG files (DTD-like ``<class>/<name>.jpg``)."""
    from PIL import Image

    from anomjax.data.anomalies import synthetic_textures

    for i, texture in enumerate(synthetic_textures((size, size))):
        path = folder / "synthetic" / f"texture_{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture).save(path, quality=95)
    return folder


def run_anomjax(args, textures: Path) -> dict:
    """Train and test anomjax's DRAEM in this process; returns its record."""
    method = DRAEM(texture_dir=str(textures))
    ds = open_dataset(args.data, image_size=args.image_size)
    state, timing = timed_training(method, ds.train, args)
    result = evaluate(method, state, ds.test, batch_size=args.batch_size)
    test_s = float(result["test_seconds"])
    last = timing.pop("last_step")
    return {**timing, "test_wall_s": test_s, "fit_test_s": timing["fit_wall_s"] + test_s,
            "final_loss": last["train/loss"], "image_auroc": float(result["image_auroc"]),
            "pixel_auroc": float(result["pixel_auroc"]), "peak_rss_mib": peak_rss_mb()}


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0], image_size=64, epochs=1,
                           batch_size=8).parse_args()
    record = {"data": args.data, "image_size": args.image_size, "epochs": args.epochs,
              "batch_size": args.batch_size, "device": str(jax.devices()[0]),
              "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        textures = write_textures(Path(tmp) / "textures", args.image_size)
        ours = record["anomjax"] = run_anomjax(args, textures)
        if not args.no_ref:
            ref = run_reference(args, "draem", ["--dtd-dir", str(textures)])
    if not args.no_ref:
        theirs = record["anomalib"] = {
            **{k: ref[k] for k in ("train_images_per_s", "fit_wall_s", "test_wall_s",
                                   "fit_test_s", "peak_rss_mib")},
            "image_auroc": ref["metrics"]["image_AUROC"],
            "pixel_auroc": ref["metrics"]["pixel_AUROC"], "on_our_masks": ref["on_our_masks"]}
        record["ratios"] = {
            "throughput_steady": ours["train_images_per_s_steady"]
            / theirs["train_images_per_s"],
            "throughput_with_compile": ours["train_images_per_s_with_compile"]
            / theirs["train_images_per_s"],
            "fit_test_speedup": theirs["fit_test_s"] / ours["fit_test_s"],
            "peak_memory": theirs["peak_rss_mib"] / ours["peak_rss_mib"],
            "image_auroc_difference": ours["image_auroc"] - theirs["image_auroc"],
            "pixel_auroc_difference": ours["pixel_auroc"] - theirs["pixel_auroc"]}
    write_record(record, args.out)


if __name__ == "__main__":
    main()
