"""Compile time of each trained method's first training step and of its scoring (issue #25).

For every method: build it with its defaults (plus ``--set`` overrides), initialise it on
random images, and time ``lower(...).compile()`` of the engine's own jitted train step
(:func:`anomjax.train.step.make_train_step`, with the frozen-feature and host inputs the
engine would pass) and of ``jax.jit(method.score)``, with XLA's persistent compilation
cache off, so every number is a cold compile. One JSON line per method, then a table:

    python experiments/bench_compile.py --methods patch_svdd cflow --image-size 64 \
        --batch-size 16 --json /tmp/compile.jsonl

Run it with another checkout's package first on ``PYTHONPATH`` to compare two commits on
the same machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.methods import make_method, method_names
from anomjax.methods.protocol import TrainedMethod
from anomjax.train.loop import run_optimizer
from anomjax.train.state import init_train_state
from anomjax.train.step import make_train_step
from anomjax.types import Batch


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), tree)


def time_method(name: str, overrides: dict[str, str], size: int, batch: int,
                steps: int) -> dict[str, Any]:
    """Seconds to compile the first train step and the scoring of ``name``."""
    method = make_method(name, overrides)
    key = jax.random.key(0)
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, size, size, 3)),
                         jnp.float32)
    start = time.perf_counter()
    state = method.init(key, images)
    init_s = time.perf_counter() - start
    optimizer = run_optimizer(method, steps)
    ts = init_train_state(state, optimizer, key)
    step = make_train_step(method, optimizer)
    frozen = (_shapes(jax.eval_shape(method.frozen_features, state, images))
              if method.uses_frozen_features else None)
    source = method.host_inputs((size, size))
    host = None if source is None else _shapes(source.draw(np.random.default_rng(0), batch))
    start = time.perf_counter()
    step.lower(ts, jax.ShapeDtypeStruct(images.shape, images.dtype), key, frozen,
               host).compile()
    step_s = time.perf_counter() - start
    n = images.shape[0]
    calibration = Batch(np.asarray(images), np.zeros(n, np.int32),
                        np.zeros(images.shape[:3], np.uint8), ("random",) * n, ("good",) * n)
    scored = method.calibrate(state, [calibration])  # some maps need their normaliser
    start = time.perf_counter()
    jax.jit(method.score).lower(scored, images).compile()
    score_s = time.perf_counter() - start
    return {"method": name, "image_size": size, "batch_size": batch, "init_s": round(init_s, 2),
            "train_step_compile_s": round(step_s, 2), "score_compile_s": round(score_s, 2),
            "overrides": overrides, "jax": jax.__version__, "device": jax.devices()[0].platform}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["all"],
                        help="trained methods, or 'all' (default)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000,
                        help="the run length the optimiser's schedule is built for")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE")
    parser.add_argument("--json", help="append one JSON line per method here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def overrides_for(name: str, sets: list[str]) -> dict[str, str]:
    out = {}
    for item in sets:
        method, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        if method == name:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.methods
    if names == ["all"]:
        names = [n for n in method_names() if issubclass(
            type(make_method(n)), TrainedMethod)]
    if args.child:  # one method per process: no compilation is shared between methods
        row = time_method(names[0], overrides_for(names[0], args.set), args.image_size,
                          args.batch_size, args.steps)
        print(json.dumps(row))
        return 0
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--child", "--methods", name, "--image-size",
               str(args.image_size), "--batch-size", str(args.batch_size), "--steps",
               str(args.steps), *[f"--set={s}" for s in args.set]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            row = {"method": name, "error": done.stderr.strip().splitlines()[-1:]}
        else:
            row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print("\n| method | init s | train step compile s | score compile s |\n|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | failed: {r['error']} | | |")
        else:
            print(f"| {r['method']} | {r['init_s']} | {r['train_step_compile_s']} | "
                  f"{r['score_compile_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
