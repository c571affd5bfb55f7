"""Time and peak memory of the pixel metrics, exact (sort) vs bounded (histograms).

Generates ``--n`` random ``--size`` x ``--size`` anomaly maps (smoothed noise, a bump on
blob-shaped defects in half of the images) and computes pixel AUROC, pixel AP and AUPRO
both ways, each in a fresh subprocess so that peak memory is its own. Times are wall
seconds of the first call (with jit compilation) and of a second call; memory is the peak
resident set size of the process and its growth over the RSS before the first call (which
already holds the maps and masks).

    python experiments/bench_metrics.py            # 100 maps of 256 x 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from scipy import ndimage


def blob_maps(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(maps [n, size, size] float32, masks [n, size, size] uint8)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(1, n, 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 64, size / 8, 2)
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 4, 4))
    maps = noise / noise.std() + 3.0 * ndimage.gaussian_filter(masks.astype(float), (0, 2, 2))
    return maps.astype(np.float32), masks


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(mode: str, n: int, size: int, seed: int) -> dict:
    """Run one mode in this process and return its numbers."""
    from anomjax.metrics import (
        aupro,
        binned_aupro,
        binned_pixel_auroc,
        binned_pixel_average_precision,
        pixel_histograms,
        pixel_ranking_metrics,
    )

    maps, masks = blob_maps(n, size, seed)

    def run() -> dict[str, float]:
        if mode == "exact":
            ranking = pixel_ranking_metrics(maps, masks)
            values = (ranking.auroc, ranking.average_precision, aupro(maps, masks))
        else:
            hist = pixel_histograms(maps, masks, disable=True)
            values = (binned_pixel_auroc(hist), binned_pixel_average_precision(hist),
                      binned_aupro(hist))
        return dict(zip(("pixel_auroc", "pixel_ap", "pixel_aupro"), map(float, values),
                        strict=True))

    rss_before = _rss_mb()
    start = time.perf_counter()
    values = run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    second = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "first_s": first, "second_s": second, "peak_rss_mb": peak,
            "rss_growth_mb": peak - rss_before, "data_mb": (maps.nbytes + masks.nbytes) / 2**20,
            **values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=("exact", "bounded"), help="run one mode (internal)")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.n, args.size, args.seed)))
        return
    rows = []
    for mode in ("exact", "bounded"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--n", str(args.n),
                              "--size", str(args.size), "--seed", str(args.seed)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.n} maps of {args.size}x{args.size} ({args.n * args.size**2:,} pixels), "
          f"maps+masks {rows[0]['data_mb']:.0f} MB")
    print(f"{'mode':8} {'1st call s':>10} {'2nd call s':>10} {'peak RSS MB':>11} "
          f"{'RSS growth MB':>13} {'pixel_auroc':>11} {'pixel_ap':>9} {'pixel_aupro':>11}")
    for r in rows:
        print(f"{r['mode']:8} {r['first_s']:10.2f} {r['second_s']:10.2f} {r['peak_rss_mb']:11.0f} "
              f"{r['rss_growth_mb']:13.0f} {r['pixel_auroc']:11.6f} {r['pixel_ap']:9.6f} "
              f"{r['pixel_aupro']:11.6f}")
    diff = {k: abs(rows[0][k] - rows[1][k]) for k in ("pixel_auroc", "pixel_ap", "pixel_aupro")}
    print("|exact - bounded|: " + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))


if __name__ == "__main__":
    main()
