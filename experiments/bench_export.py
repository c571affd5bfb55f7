"""Latency of exported scorers (``anomjax export``) against the checkpoint, same images.

    python experiments/bench_export.py [--image-size 256]
        [--methods patchcore padim stpm fastflow draem] [--out /tmp/bench_export]

For each method: fit it (a trained method for one optimiser step: latency does not depend on
the weights) on a synthetic category at ``--image-size``, export it, then measure on the same
16 test images, the fit and each measurement in its own child process (so each
peak memory, the maximum resident set in MiB, is its own):

* ``exported``: :meth:`anomjax.deploy.Scorer.score` on images already in memory;
* ``checkpoint``: ``jax.jit(method.score)`` on the same images (what ``predict`` runs);
* ``predict artefact`` / ``predict run``: ``anomjax predict`` end to end (decode, resize,
  score, write heat maps and ``scores.csv``) on the artefact and on the run folder.

Images per second at batch 1 and 16 exclude the first call (compilation), which is reported
as ``first call s``. Prints a Markdown table and writes it to ``OUT/bench_export.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KINDS = ("exported", "checkpoint", "predict artefact", "predict run")


def measure(kind: str, run: Path, artefact: Path, images_dir: Path, batch: int,
            out: Path) -> dict:
    """One measurement (in this process): images per second after the first call."""
    from anomjax import deploy, runs
    from anomjax.data import read_image

    files = sorted(str(p) for p in images_dir.glob("*.png"))
    if kind in ("exported", "checkpoint"):
        images = np.stack([read_image(f) for f in files])
        if kind == "exported":
            scorer = deploy.load(artefact)
            call = lambda x: scorer.score(x).maps  # noqa: E731
        else:
            import jax

            from anomjax.run_folder import load_run

            method, state, _ = load_run(run)
            score_fn = jax.jit(method.score)
            call = lambda x: np.asarray(score_fn(state, x.astype(np.float32) / 255.0).maps)  # noqa: E731
        start = time.perf_counter()
        call(images[:batch])
        first = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(0, len(images) - batch + 1, batch):
            call(images[i:i + batch])
        seconds = time.perf_counter() - start
        n = (len(images) // batch) * batch
    else:
        folder = artefact if kind == "predict artefact" else run
        start = time.perf_counter()
        runs.predict(folder, files[:batch], out / "warm", batch_size=batch, threshold=1.0,
                     progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        runs.predict(folder, files, out / "pred", batch_size=batch, threshold=1.0,
                     progress=False)
        seconds = time.perf_counter() - start
        n = len(files)
    return {"images_per_second": n / seconds, "first_call_s": first,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def prepare(method_name: str, size: int, root: Path) -> tuple[Path, Path, Path]:
    """Fit ``method_name`` on a synthetic category and export it: ``(run, artefact, test
    images folder)``."""
    from anomjax import runs
    from anomjax.data.synthetic import write_mvtec
    from anomjax.methods import make_method

    data = root / f"data{size}"
    if not data.exists():
        write_mvtec(data, categories=("wood",), n_train=16, n_test_good=8,
                    n_test_defect=8, image_size=size, seed=0, disable=True)
    method = make_method(method_name)
    run, artefact = root / method_name / "run", root / method_name / "artefact"
    runs.fit(method, data / "wood", run, image_size=size, batch_size=8, overwrite=True,
             progress=False, **({"steps": 1} if method.kind == "train" else {}))
    runs.export(run, artefact, threshold=1.0, overwrite=artefact.exists())
    images = root / f"images{size}"
    if not images.exists():
        images.mkdir()
        for i, f in enumerate(sorted((data / "wood" / "test").rglob("*.png"))):
            (images / f"{i:03d}.png").write_bytes(f.read_bytes())
    return run, artefact, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--methods", nargs="+",
                        default=["patchcore", "padim", "stpm", "fastflow", "draem"])
    parser.add_argument("--out", default="/tmp/bench_export")
    parser.add_argument("--worker", nargs=5, metavar=("KIND", "RUN", "ART", "IMAGES", "B"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.prepare:  # in a child, so that the measurements' peak memory is not the fit's
        print(json.dumps([str(p) for p in prepare(args.prepare, args.image_size, out)]))
        return
    if args.worker:
        kind, run, artefact, images, batch = args.worker
        print(json.dumps(measure(kind, Path(run), Path(artefact), Path(images), int(batch),
                                 out / "work" / kind.replace(" ", "_"))))
        return
    out.mkdir(parents=True, exist_ok=True)
    import jax

    lines = [f"{args.image_size} px, 16 synthetic test images, {jax.devices()[0].platform} "
             f"({jax.device_count()} device), jax {jax.__version__}", "",
             "| method | scorer | batch | images/s | first call s | peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.methods:
        proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--image-size",
                               str(args.image_size), "--prepare", name],
                              capture_output=True, text=True, check=True)
        run, artefact, images = map(Path, json.loads(proc.stdout.strip().splitlines()[-1]))
        for batch in (1, 16):
            for kind in KINDS:
                proc = subprocess.run(
                    [sys.executable, __file__, "--out", str(out), "--worker", kind, str(run),
                     str(artefact), str(images), str(batch)],
                    capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    line = f"| {name} | {kind} | {batch} | failed: " \
                           f"{proc.stderr.strip().splitlines()[-1]} | | |"
                else:
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    line = (f"| {name} | {kind} | {batch} | {r['images_per_second']:.1f} | "
                            f"{r['first_call_s']:.1f} | {r['peak_rss_mib']:.0f} |")
                lines.append(line)
                print(line, flush=True)
    (out / "bench_export.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
