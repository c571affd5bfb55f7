"""DRAEM training throughput, fit + test time, AUROCs and peak memory: anomjax vs anomalib 2.7.

    python experiments/bench_draem.py [--data ../shared/data/mvtec3d_tire] [--image-size 64]
        [--batch-size 8] [--epochs 1] [--out /tmp/bench_draem.json]

Both sides train the full-width DRAEM (reconstructive width 128, discriminative 64) on the
same folder, image size, batch size and epochs, with the same anomaly source: the procedural
textures anomjax uses by default (:func:`anomjax.data.anomalies.synthetic_textures`) are
written to a folder that anomalib's ``dtd_dir`` and anomjax's ``texture_dir`` both read
(anomalib has no DTD offline either; without a folder it would blend Perlin noise only).
Each side runs in its own process (peak memory = its maximum resident set, MiB). anomalib's
fit time includes one validation pass over the test images (its default). Training
throughput is training images per second over the whole training loop (first step, and so
compilation, included, as anomalib's loop time includes its first step); anomjax's
steady-state rate (median over steps after the first) is printed too. Ratios: anomjax over
anomalib for throughput, anomalib over anomjax for times and memory (above 1 = anomjax better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REF = REPO.parent / "shared" / "tools" / "ref_anomalib.py"
REF_PYTHON = "/tmp/venv-anomalib/bin/python"


def write_textures(folder: Path, size: int) -> Path:
    """The default anomjax anomaly source as JPEG files (DTD-like ``<class>/<name>.jpg``)."""
    from PIL import Image

    from anomjax.data.anomalies import synthetic_textures

    textures = synthetic_textures((size, size))
    for i, texture in enumerate(textures):
        path = folder / "synthetic" / f"texture_{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture).save(path, quality=95)
    return folder


def run_anomjax(args: argparse.Namespace, textures: Path) -> dict:
    """Train and test anomjax's DRAEM in this process; returns its record."""
    import jax

    from anomjax.data import open_dataset
    from anomjax.evaluate import evaluate, peak_rss_mb
    from anomjax.methods import make_method
    from anomjax.train import train_method

    method = make_method("draem", texture_dir=str(textures))
    ds = open_dataset(args.data, image_size=args.image_size)
    with tempfile.TemporaryDirectory() as run:
        start = time.perf_counter()
        state = train_method(method, jax.random.PRNGKey(0), ds.train, epochs=args.epochs,
                             batch_size=args.batch_size, run_dir=run, disable=True)
        jax.block_until_ready(state)
        fit_s = time.perf_counter() - start
        log = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().split(
            "\n") if line.strip()]
    rates = [r["images_per_s"] for r in log if "images_per_s" in r]
    loop_s = sum(args.batch_size / r for r in rates)
    result = evaluate(method, state, ds.test, batch_size=args.batch_size)
    return {"side": "anomjax", "fit_s": fit_s, "test_s": float(result["test_seconds"]),
            "train_images_per_s": len(rates) * args.batch_size / loop_s,
            "steady_images_per_s": statistics.median(rates[1:]) if len(rates) > 1 else None,
            "image_auroc": float(result["image_auroc"]),
            "pixel_auroc": float(result["pixel_auroc"]), "peak_mb": peak_rss_mb(),
            "steps": len(rates)}


def run_anomalib(args: argparse.Namespace, textures: Path, out: Path) -> dict:
    """anomalib's DRAEM through ``ref_anomalib.py`` (its own venv and process)."""
    cmd = [REF_PYTHON, str(REF), "--data", str(args.data), "--model", "draem",
           "--image-size", str(args.image_size), "--epochs", str(args.epochs),
           "--train-batch-size", str(args.batch_size), "--eval-batch-size",
           str(args.batch_size), "--dtd-dir", str(textures), "--skip-backbone-check",
           "--out", str(out)]
    subprocess.run(cmd, check=True)
    rec = json.loads(out.read_text())
    timing, metrics = rec["timing"], rec["metrics"]
    images = timing["train_batches"] * args.batch_size
    return {"side": "anomalib", "fit_s": timing["fit_wall_s"], "test_s": timing["test_wall_s"],
            "train_images_per_s": images / timing["fit_train_loop_s"],
            "image_auroc": metrics["image_AUROC"], "pixel_auroc": metrics["pixel_AUROC"],
            "peak_mb": rec["memory"]["peak_rss_mib"], "steps":
                timing["train_batches"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" /
                        "mvtec3d_tire")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_draem.json"))
    parser.add_argument("--side", choices=("anomjax",), help=argparse.SUPPRESS)
    parser.add_argument("--textures", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "anomjax":  # child process
        args.out.write_text(json.dumps(run_anomjax(args, args.textures)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        textures = write_textures(Path(tmp) / "textures", args.image_size)
        ours_out = Path(tmp) / "anomjax.json"
        subprocess.run([sys.executable, __file__, "--side", "anomjax", "--textures",
                        str(textures), "--data", str(args.data), "--image-size",
                        str(args.image_size), "--batch-size", str(args.batch_size),
                        "--epochs", str(args.epochs), "--out", str(ours_out)], check=True)
        ours = json.loads(ours_out.read_text())
        theirs = run_anomalib(args, textures, Path(tmp) / "anomalib.json")
    ratios = {"train_throughput": ours["train_images_per_s"] / theirs["train_images_per_s"],
              "fit_time": theirs["fit_s"] / ours["fit_s"],
              "test_time": theirs["test_s"] / ours["test_s"],
              "fit_plus_test_time": (theirs["fit_s"] + theirs["test_s"])
              / (ours["fit_s"] + ours["test_s"]),
              "peak_memory": theirs["peak_mb"] / ours["peak_mb"],
              "image_auroc_diff": ours["image_auroc"] - theirs["image_auroc"],
              "pixel_auroc_diff": ours["pixel_auroc"] - theirs["pixel_auroc"]}
    record = {"settings": {"data": str(args.data), "image_size": args.image_size,
                           "batch_size": args.batch_size, "epochs": args.epochs},
              "anomjax": ours, "anomalib": theirs, "ratios": ratios}
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
