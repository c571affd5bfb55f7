"""Subprocess entry point of the GAN engine tests: train a tiny GANomaly, save its state.

Usage: python gan_run.py OUT.npz --epochs N --batch-size B [--run-dir D] [--resume]
       [--checkpoint-every K] [--slow-after S]
"""

from __future__ import annotations

import argparse
import os
import sys


def tiny_ganomaly():
    from anomjax.methods.generative.ganomaly import GANomaly

    return GANomaly(width=4, latent=8, learning_rate=1e-3)


def gan_split():
    from train_toy import toy_split

    return toy_split(n=16, size=16)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--slow-after", type=int, default=None)
    args = p.parse_args()

    sys.path.insert(0, os.path.dirname(__file__))
    import jax
    import numpy as np
    from train_toy_run import SlowSplit

    from anomjax.train import train_method

    split = gan_split()
    if args.slow_after is not None:
        split = SlowSplit(split, args.slow_after)
    state = train_method(tiny_ganomaly(), jax.random.key(3), split, epochs=args.epochs,
                         batch_size=args.batch_size, run_dir=args.run_dir, resume=args.resume,
                         checkpoint_every=args.checkpoint_every, num_workers=0, disable=True)
    flat = {"/".join(str(k) for k in path): np.asarray(jax.device_get(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    np.savez(args.out, **flat)


if __name__ == "__main__":
    main()
