"""CPU against accelerator: do PatchCore, PaDiM and STPM give the same maps on a GPU or TPU?

Each method is fitted (or trained) once on the CPU on a small synthetic category; the same
state then scores the test split on the CPU and on the accelerator (``jax.devices()[0]``).
Printed per method: the largest absolute and relative difference of the anomaly maps and
of the image scores, and the accelerator's metrics minus the CPU's (image/pixel AUROC,
AUPRO). Matrix products and convolutions that decide these scores run at
``Precision.HIGHEST`` (see ``tests/methods/test_score_precision.py``), so the differences
should stay at float32 rounding (about 1e-5 relative); TF32 or bfloat16 products would show
up here as 1e-3 to 1e-1. ``--default-precision`` reruns the accelerator pass with
``jax_default_matmul_precision`` forced to ``"bfloat16"``, to show the size of what HIGHEST
prevents (explicit ``precision=HIGHEST`` arguments still win over it).

    python experiments/accelerator_check.py [--category metal] [--image-size 64]

Without an accelerator the script says so and compares the CPU with itself (every
difference 0), which checks the script's own path.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import jax
import numpy as np

from anomjax.types import Batch

METHODS = ("patchcore", "padim", "stpm")
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def fit_on_cpu(name: str, train, epochs: int, batch_size: int, seed: int):
    """The method (small settings) and its state, fitted or trained on the CPU."""
    from anomjax.methods import make_method

    fields = {"progress": False, "coreset_ratio": 0.1} if name == "patchcore" else {}
    method = make_method(name, **fields)
    key = jax.random.key(seed)
    with jax.default_device(jax.devices("cpu")[0]):
        if method.kind == "train":
            from anomjax.train import train_method

            state = train_method(method, key, train, epochs=epochs, batch_size=batch_size,
                                 devices=jax.devices("cpu"), disable=True)
        else:
            state = method.fit(key, train.batches(batch_size))
    return method, jax.device_get(state)


def score_on(device, method, state, test: Batch, batch_size: int, precision: str | None):
    """Image scores ``[N]`` and maps ``[N, H, W]`` of ``test`` scored on ``device``."""
    context = (jax.default_matmul_precision(precision) if precision else
               contextlib.nullcontext())
    images, maps = [], []
    with jax.default_device(device), context:
        placed = jax.device_put(state, device)
        score = jax.jit(method.score)
        for start in range(0, len(test.images), batch_size):
            s = score(placed, jax.device_put(test.images[start:start + batch_size], device))
            images.append(np.asarray(s.image))
            maps.append(np.asarray(s.maps))
    return np.concatenate(images), np.concatenate(maps)


def compare(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray],
            test: Batch) -> dict:
    """Max abs/rel differences of image scores and maps, and the metric deltas."""
    from anomjax.metrics import compute_metrics

    out = {}
    for what, a, b in (("image", reference[0], other[0]), ("maps", reference[1], other[1])):
        diff = np.abs(a.astype(np.float64) - b)
        out[f"{what}_max_abs"] = float(diff.max())
        out[f"{what}_max_rel"] = float((diff / np.maximum(np.abs(a), 1e-12)).max())
    ref_m = compute_metrics(reference[0], test.labels, reference[1], test.masks)
    new_m = compute_metrics(other[0], test.labels, other[1], test.masks)
    out.update({f"delta_{k}": float(new_m[k] - ref_m[k]) for k in METRICS})
    out.update({f"cpu_{k}": float(ref_m[k]) for k in METRICS})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--category", default="metal")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="STPM training epochs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-precision", action="store_true",
                        help="also score on the accelerator with bfloat16 default matmuls")
    parser.add_argument("--json", default=None, help="write the records to this file")
    args = parser.parse_args()

    from anomjax.data.synthetic import make_category

    accelerator = jax.devices()[0]
    if accelerator.platform == "cpu":
        print("no accelerator found (jax.devices() is the CPU): comparing the CPU with itself")
    print(f"reference: {jax.devices('cpu')[0]}; accelerator: {accelerator} "
          f"({accelerator.device_kind}); {args.category}, {args.image_size} px, "
          f"{args.n_train} training images")
    ds = make_category(args.category, n_train=args.n_train, n_test_good=4, n_test_defect=8,
                       image_size=args.image_size, seed=args.seed)
    test = ds.test.load_all()
    records = []
    for name in [m for m in args.methods.split(",") if m]:
        method, state = fit_on_cpu(name, ds.train, args.epochs, args.batch_size, args.seed)
        cpu = score_on(jax.devices("cpu")[0], method, state, test, args.batch_size, None)
        passes = [("highest", None)] + ([("bf16 default", "bfloat16")]
                                        if args.default_precision else [])
        for label, precision in passes:
            other = score_on(accelerator, method, state, test, args.batch_size, precision)
            record = {"method": name, "pass": label, **compare(cpu, other, test)}
            records.append(record)
            print(f"{name:10s} {label:12s} maps max abs {record['maps_max_abs']:.2e} "
                  f"rel {record['maps_max_rel']:.2e} | image max abs "
                  f"{record['image_max_abs']:.2e} rel {record['image_max_rel']:.2e} | "
                  + ", ".join(f"{k} {record['cpu_' + k]:.4f} {record['delta_' + k]:+.1e}"
                              for k in METRICS), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
