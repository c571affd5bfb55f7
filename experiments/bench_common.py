"""Pieces shared by the side-by-side benchmarks against anomalib 2.7 (``bench_*.py``).

* :func:`bench_arguments`: the common command line (data folder, image size, epochs, batch
  size, workers, seed, the reference interpreter, ``--no-ref``, ``--quiet``, ``--out``);
* :func:`timed_training`: ``train_method`` into a temporary run folder, fetching every
  step's metrics (``log_every=1``) so that the first, compiling step is timed on its own;
* :func:`run_reference`: ``../shared/tools/ref_anomalib.py`` in its own interpreter, with
  its timings converted to the same figures and its maps scored against anomjax's masks;
* :func:`test_masks` and :func:`on_our_masks`: a reference's dumped maps scored by anomjax's
  metrics against the ground truth as anomjax's reader resizes it.

The two libraries resize ground-truth masks differently: anomalib by PyTorch's nearest rule
(``floor(i * in / out)``, half a source pixel off the image's resampling grid), anomjax by
pixel centres (PIL's ``NEAREST``, the authors' pipelines). Small or thin defects then differ
by many pixels, and pixel metrics by several points for the same maps, so the benchmarks
report anomalib's maps on anomjax's masks beside anomalib's own metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
REF_SCRIPT = REPO.parent / "shared" / "tools" / "ref_anomalib.py"
REF_PYTHON = "/tmp/venv-anomalib/bin/python"
TINY_TIRE = REPO.parent / "shared" / "data" / "mvtec3d_tire"


def bench_arguments(description: str, *, image_size: int, epochs: int,
                    batch_size: int) -> argparse.ArgumentParser:
    """The arguments every benchmark takes, with its own defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=str(TINY_TIRE))
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-ref", action="store_true", help="skip the anomalib run")
    p.add_argument("--ref-python", default=REF_PYTHON)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="write the JSON record here")
    return p


def timed_training(method: Any, split: Any, args: argparse.Namespace
                   ) -> tuple[Any, dict[str, Any]]:
    """``(state, timing)``: ``method`` trained on ``split``; ``timing`` has the fit wall
    seconds, the training throughput over all steps and without the first (compiling) one,
    the first step's seconds, the number of steps and the last step's metrics."""
    from anomjax.train import train_method

    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        state = train_method(method, jax.random.key(args.seed), split, epochs=args.epochs,
                             batch_size=args.batch_size, run_dir=run_dir,
                             num_workers=args.num_workers, log_every=1,
                             disable=args.quiet)
        jax.block_until_ready(state)
        fit_s = time.perf_counter() - start
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    steps = [s for s in map(json.loads, filter(None, lines)) if "train/images_per_s" in s]
    step_s = np.array([args.batch_size / s["train/images_per_s"] for s in steps])
    return state, {
        "train_images_per_s_with_compile": len(steps) * args.batch_size / step_s.sum(),
        "train_images_per_s_steady": ((len(steps) - 1) * args.batch_size / step_s[1:].sum()
                                      if len(steps) > 1 else None),
        "first_step_s": float(step_s[0]), "steps": len(steps), "fit_wall_s": fit_s,
        "last_step": steps[-1],
    }


def test_masks(data: str, image_size: int) -> dict[str, np.ndarray]:
    """``{resolved path: [H, W] uint8 mask}`` of ``data``'s test split as anomjax reads it."""
    from anomjax.data import open_dataset

    test = open_dataset(data, image_size=image_size).test.load_all()
    return {os.path.realpath(p): m for p, m in zip(test.paths, test.masks, strict=True)}


def on_our_masks(ref_maps: str | Path, our_masks: dict[str, np.ndarray]
                 ) -> dict[str, Any] | None:
    """anomalib's dumped test maps (``ref_anomalib.py --dump-maps``) and image scores scored
    by :func:`anomjax.metrics.compute_metrics` against ``our_masks`` (:func:`test_masks`,
    aligned by resolved path): ``metrics`` (image / pixel AUROC, AUPRO) and
    ``mask_mismatch``, the pixels where the two libraries' masks differ as a fraction of
    anomjax's defect pixels. ``None`` for a model without maps (GANomaly)."""
    from anomjax.metrics import compute_metrics

    ref = np.load(ref_maps)
    if ref["anomaly_maps"].ndim != 3:
        return None
    masks = np.stack([our_masks[os.path.realpath(p)] for p in ref["image_paths"]])
    metrics = compute_metrics(ref["pred_scores"], ref["gt_labels"], ref["anomaly_maps"], masks)
    return {"metrics": {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "pixel_aupro")},
            "mask_mismatch": float((masks != (ref["gt_masks"] > 0)).sum()
                                   / max(int(masks.sum()), 1))}


def run_reference(args: argparse.Namespace, model: str,
                  extra: Sequence[str] = ()) -> dict[str, Any]:
    """anomalib's ``model`` with the benchmark's settings in its own interpreter: its JSON
    record plus ``train_images_per_s``, ``fit_wall_s``, ``test_wall_s``, ``fit_test_s`` and
    ``on_our_masks`` (:func:`on_our_masks`; its maps are dumped after its timings)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ref.json"
        cmd = [args.ref_python, str(REF_SCRIPT), "--data", args.data, "--model", model,
               "--image-size", str(args.image_size), "--epochs", str(args.epochs),
               "--train-batch-size", str(args.batch_size), "--eval-batch-size",
               str(args.batch_size), "--skip-backbone-check", "--seed", str(args.seed),
               *extra, "--out", str(out), "--dump-maps", tmp]
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        ref = json.loads(out.read_text())
        ref["on_our_masks"] = on_our_masks(ref["dump"], test_masks(args.data, args.image_size))
    timing = ref["timing"]
    return {**ref,
            "train_images_per_s": (ref["dataset"]["n_train"] * args.epochs
                                   / timing["fit_train_loop_s"]),
            "fit_wall_s": timing["fit_wall_s"], "test_wall_s": timing["test_wall_s"],
            "fit_test_s": timing["fit_wall_s"] + timing["test_wall_s"],
            "peak_rss_mib": ref.get("memory", {}).get("peak_rss_mib")}


def write_record(record: dict[str, Any], out: str | None) -> None:
    """Print ``record`` as JSON and write it to ``out`` when given."""
    text = json.dumps(record, indent=1)
    print(text, flush=True)
    if out:
        Path(out).write_text(text)
