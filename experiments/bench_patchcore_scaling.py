"""How PatchCore's fit time and peak memory grow with training-set size and coreset ratio.

Every configuration runs in a fresh process (so its peak RSS is its own) on synthetic
images streamed batch by batch (:func:`anomjax.data.synthetic.generate_image`; the data
set is never held in memory). Prints a Markdown table; ``--json`` also writes the records.

    python experiments/bench_patchcore_scaling.py                   # default grid
    python experiments/bench_patchcore_scaling.py --sizes 50,200 --ratios 0.1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

DEFAULT_SIZES = (50, 200, 800, 3200)
DEFAULT_RATIOS = (0.01, 0.1)
EXTRA_RATIOS_AT = 800
EXTRA_RATIOS = (0.25,)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def run_one(n_train: int, ratio: float, image_size: int, batch_size: int, category: str,
            bank_dtype: str) -> dict:
    """Fit PatchCore on ``n_train`` synthetic images; time the phases, measure memory.

    ``fit_s`` excludes the time spent generating the synthetic images; it includes JAX
    compilation (as a user's first fit does).
    """
    import jax
    import numpy as np

    from anomjax.data import synthetic
    from anomjax.methods.feature_modeling import patchcore as pc
    from anomjax.nn import coreset as coreset_module
    from anomjax.types import Batch

    generation_seconds = []

    def batches() -> Iterator[Batch]:
        for start in range(0, n_train, batch_size):
            t0 = time.perf_counter()
            idx = range(start, min(start + batch_size, n_train))
            images = np.stack([synthetic.generate_image(category, "good", i, image_size=image_size,
                                                        split="train")[0] for i in idx])
            generation_seconds.append(time.perf_counter() - t0)
            n = len(images)
            yield Batch(images=images, labels=np.zeros(n, np.int32),
                        masks=np.zeros((n, image_size, image_size), np.uint8),
                        paths=tuple(f"{category}/train/good/{i:05d}.png" for i in idx),
                        defect_types=("good",) * n)

    coreset_seconds = []
    original = coreset_module.greedy_coreset

    def timed_coreset(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        coreset_seconds.append(time.perf_counter() - start)
        return out

    pc.greedy_coreset = timed_coreset  # time the selection phase separately
    method = pc.PatchCore(coreset_ratio=ratio, bank_dtype=bank_dtype, progress=False)
    _ = method.feature_layers  # build the architecture before the clock starts
    rss_before = _rss_mb()
    cpu_before = _cpu_s()
    start = time.perf_counter()
    state = method.fit(jax.random.key(0), batches())
    jax.block_until_ready(state["bank"])
    fit_s = time.perf_counter() - start - sum(generation_seconds)  # the method's time only
    fit_cpu_s = _cpu_s() - cpu_before - sum(generation_seconds)  # generation is single-threaded
    patches = n_train * (image_size // 8) ** 2
    return {"n_train": n_train, "coreset_ratio": ratio, "image_size": image_size,
            "patches": patches, "bank": int(state["bank"].shape[0]),
            "bank_dim": int(state["bank"].shape[1]), "bank_dtype": bank_dtype,
            "fit_s": round(fit_s, 2), "fit_cpu_s": round(fit_cpu_s, 1),
            "coreset_s": round(sum(coreset_seconds), 2),
            "peak_rss_mb": _rss_mb(), "rss_before_fit_mb": rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)))
    parser.add_argument("--extra-ratios", default=",".join(map(str, EXTRA_RATIOS)),
                        help=f"ratios run only at {EXTRA_RATIOS_AT} images (or the largest size "
                             "below it)")
    parser.add_argument("--skip", default="3200@0.1",
                        help="comma-separated N@ratio pairs to leave out (too slow for 2 cores)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--category", default="metal")
    parser.add_argument("--bank-dtype", default="float32")
    parser.add_argument("--json", default=None, help="also write the records here")
    parser.add_argument("--one", nargs=2, metavar=("N", "RATIO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        record = run_one(int(args.one[0]), float(args.one[1]), args.image_size, args.batch_size,
                         args.category, args.bank_dtype)
        print("RECORD " + json.dumps(record), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    ratios = [float(r) for r in args.ratios.split(",") if r]
    skip = {s for s in args.skip.split(",") if s}
    grid = [(n, r) for n in sizes for r in ratios if f"{n}@{r}" not in skip]
    extra_n = max([n for n in sizes if n <= EXTRA_RATIOS_AT], default=None)
    if extra_n is not None:
        grid += [(extra_n, float(r)) for r in args.extra_ratios.split(",") if r]
    records = []
    for n, r in grid:
        cmd = [sys.executable, __file__, "--one", str(n), str(r), "--image-size",
               str(args.image_size), "--batch-size", str(args.batch_size), "--category",
               args.category, "--bank-dtype", args.bank_dtype]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RECORD ")]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"N={n} ratio={r} failed:\n{out.stderr[-3000:]}")
        records.append(json.loads(lines[-1][len("RECORD "):]))
        print(f"done N={n} ratio={r}: {records[-1]}", file=sys.stderr, flush=True)
    header = ("| train images | patches | coreset ratio | bank | fit s | fit CPU s "
              "| of which coreset s | peak RSS MiB | RSS before fit MiB |")
    print(f"\nPatchCore (Lite0 stage3+stage5, {args.image_size} px synthetic '{args.category}', "
          f"batch {args.batch_size}, bank {args.bank_dtype})\n")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for rec in records:
        print(f"| {rec['n_train']} | {rec['patches']} | {rec['coreset_ratio']} | "
              f"{rec['bank']} x {rec['bank_dim']} | {rec['fit_s']} | {rec['fit_cpu_s']} | "
              f"{rec['coreset_s']} | "
              f"{rec['peak_rss_mb']} | {rec['rss_before_fit_mb']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
