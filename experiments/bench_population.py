"""K models in one step against K sequential runs, for STPM and PaDiM.

    python experiments/bench_population.py [--k 8] [--image-size 64] [--epochs 1]
        [--member-execution vmap map]

Data: one synthetic category (``anomjax.data.synthetic``) written to a temporary folder, so
images are decoded from disk as in real runs. For each method it times, in one process:

* ``sequential``: K separate runs (``train_method`` / ``fit``, then scoring the test split),
  each compiling once more only where its shapes differ (they do not: same config);
* one ``Population(method, size=K, member_execution=MODE)`` run per MODE (one jitted step
  for all K members: ``vmap`` batches them, ``map`` runs them one after another inside the
  step), then the K members scored in one call per batch.

Times include compilation (each variant compiles its own step once). Prints the seconds of
both and their ratio; the numbers depend on the machine (measured rows: the issue notes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax

from anomjax.data import open_dataset
from anomjax.data.synthetic import write_mvtec
from anomjax.methods import make_method
from anomjax.methods.population import Population
from anomjax.train import train_method


def score_split(score, state, split, batch_size: int) -> None:
    for batch in split.batches(batch_size):
        jax.block_until_ready(score(state, batch.images))


def sequential_seconds(method, data, args) -> float:
    """Seconds of K separate fits/trainings, each followed by scoring the test split."""
    keys = jax.random.split(jax.random.key(0), args.k)
    score = jax.jit(method.score)
    t0 = time.perf_counter()
    for key in keys:
        if method.kind == "train":
            state = train_method(method, key, data.train, epochs=args.epochs,
                                 batch_size=args.batch_size, disable=True)
        else:
            state = method.fit(key, data.train.batches(args.batch_size))
        score_split(score, state, data.test, args.batch_size)
    return time.perf_counter() - t0


def population_seconds(population, data, args) -> float:
    """Seconds of one population run, then scoring all members on the test split."""
    method, keys = population.method, jax.random.split(jax.random.key(0), args.k)
    t0 = time.perf_counter()
    if method.kind == "train":
        state = train_method(population, keys[0], data.train, epochs=args.epochs,
                             batch_size=args.batch_size, disable=True)
    else:
        state = population.fit(keys[0], data.train.batches(args.batch_size))
    score_split(jax.jit(population.member_scores), state, data.test, args.batch_size)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["stpm", "padim"])
    parser.add_argument("--member-execution", nargs="+", default=["vmap", "map"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (folder,) = write_mvtec(Path(tmp), categories=("metal",), n_train=16, n_test_good=4,
                                n_test_defect=4, image_size=args.image_size, disable=True)
        data = open_dataset(folder, image_size=args.image_size)
        print(f"K={args.k}, {len(data.train)} train / {len(data.test)} test images at "
              f"{args.image_size} px, batch {args.batch_size}, epochs {args.epochs}, "
              f"backend {jax.default_backend()}")
        for name in args.methods:
            method = make_method(name, precise_bn=False) if name == "stpm" else make_method(name)
            sequential = sequential_seconds(method, data, args)
            line = f"{name:<8} sequential {sequential:7.1f} s"
            for mode in args.member_execution:
                seconds = population_seconds(
                    Population(method, size=args.k, member_execution=mode), data, args)
                line += f"   {mode} {seconds:7.1f} s ({sequential / seconds:4.2f}x)"
            print(line)


if __name__ == "__main__":
    main()
