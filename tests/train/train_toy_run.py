"""Subprocess entry point of the engine tests: train the toy method, save the params.

Usage: python run_toy.py OUT.npz --epochs N --batch-size B [--run-dir D] [--resume]
       [--checkpoint-every K] [--slow-after S] [--log-every L] [--devices N] [--process-id I
       --num-processes P --port PORT]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--slow-after", type=int, default=None)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--save-run", default=None, help="also save_run() the result here")
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args()

    import jax

    if args.process_id is not None:  # the CLI's --distributed entry, from the environment
        from anomjax.train import initialize_from_env

        os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{args.port}",
                          JAX_NUM_PROCESSES=str(args.num_processes),
                          JAX_PROCESS_ID=str(args.process_id))
        initialize_from_env()
    import numpy as np

    sys.path.insert(0, os.path.dirname(__file__))
    from train_toy import HostSkewedInit, ToyConvAE, toy_split

    from anomjax.train import train_method

    split = toy_split(n=args.n)
    if args.slow_after is not None:
        split = SlowSplit(split, args.slow_after)
    devices = jax.devices()[:args.devices] if args.devices else None
    # Under jax.distributed, process i > 0 initialises differently: process 0's init must win.
    method = HostSkewedInit() if args.process_id is not None else ToyConvAE()
    state = train_method(method, jax.random.key(3), split, epochs=args.epochs,
                         batch_size=args.batch_size, run_dir=args.run_dir, resume=args.resume,
                         checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                         num_workers=0,
                         devices=devices, disable=True)
    flat = {"/".join(str(k) for k in path): np.asarray(jax.device_get(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    if args.save_run:
        from anomjax.run_folder import save_run

        save_run(args.save_run, method, state, {"process": jax.process_index()})
    if jax.process_index() == 0:
        np.savez(args.out, **flat)


class SlowSplit:
    """Wraps a split; after ``after`` yielded training batches every batch takes 30 s."""

    def __init__(self, split, after: int):
        self.split, self.after, self.count = split, after, 0

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, batch_size: int = 32, **kw):
        for batch in self.split.batches(batch_size, **kw):
            if kw.get("shuffle"):
                if self.count >= self.after:
                    time.sleep(30)
                self.count += 1
            yield batch


if __name__ == "__main__":
    main()
