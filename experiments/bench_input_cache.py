"""Seconds per pass over a training split with and without the decoded-image RAM cache.

    python experiments/bench_input_cache.py [--data ../shared/data/magnetic_tile]
        [--image-size 256] [--passes 3]

Each pass streams the split in shuffled batches as the training engine does; the first pass
decodes and resizes every image in both settings, later passes read the cache when it is on.
"""

from __future__ import annotations

import argparse
import os
import time

from anomjax.data import open_dataset


def seconds_per_pass(data: str, image_size: int, passes: int, cache_mb: float) -> list[float]:
    """Wall seconds of each of ``passes`` shuffled passes with a ``cache_mb`` MiB cache."""
    os.environ["ANOMJAX_DATA_CACHE_MB"] = str(cache_mb)
    split = open_dataset(data, image_size=image_size).train
    times = []
    for epoch in range(passes):
        start = time.perf_counter()
        for _ in split.batches(16, shuffle=True, epoch=epoch, drop_remainder=True):
            pass
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/magnetic_tile")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args()
    off = seconds_per_pass(args.data, args.image_size, args.passes, 0)
    on = seconds_per_pass(args.data, args.image_size, args.passes, 2048)
    print(f"{args.data} at {args.image_size} px, seconds per pass")
    print("cache off: " + ", ".join(f"{t:.2f}" for t in off))
    print("cache on:  " + ", ".join(f"{t:.2f}" for t in on))
    later_off, later_on = sum(off[1:]) / len(off[1:]), sum(on[1:]) / len(on[1:])
    print(f"later passes: {later_off / later_on:.1f}x faster with the cache")


if __name__ == "__main__":
    main()
