"""The ``anomjax`` command: ``fit``, ``test``, ``predict``, ``list``, ``demo``, and the
experiment commands ``run``, ``sweep``, ``benchmark`` (:mod:`anomjax.experiment.cli`).

Every error a user can cause (bad paths, bad data, unknown names, missing weights, corrupt
run files, out-of-range settings) prints one clear line on stderr and exits with status 2;
``ANOMJAX_DEBUG=1`` shows the traceback. Output paths and run files are checked before the
work starts.

Multi-host training: start the same ``anomjax fit --distributed ...`` command on every host
with ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` set (or under SLURM / Open MPI / a Cloud TPU pod, which JAX detects);
``--batch-size`` is the global batch, and only process 0 writes the final run files.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from anomjax.data.transforms import RESIZE_DTYPES
from anomjax.evaluate import evaluate, peak_rss_mb
from anomjax.methods.base import make_method, method_class, method_names
from anomjax.run_folder import (
    THRESHOLD_FILE,
    RunError,
    atomic_writer,
    check_writable_dir,
    check_writable_file,
    load_method,
    load_run,
    load_threshold,
    prepare_run_dir,
    run_lock,
    save_run,
    write_json,
)

METRIC_KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
               "pixel_aupro")
#: Largest ``--image-size`` / ``--crop`` side: 4096 px already needs ~200 MB per RGB image.
MAX_IMAGE_SIDE = 4096
MAX_BATCH_SIZE = 4096
DEFAULT_BATCH_SIZE = 16


class UsageError(Exception):
    """A command-line mistake, reported as one line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anomjax`` console script."""
    from anomjax.experiment.cli import split_config_overrides

    try:
        argv, config_overrides = split_config_overrides(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        print(f"anomjax: error: {err}", file=sys.stderr)
        return 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a bad argument (one line, status 2) or --help (0)
        return int(exit_.code or 0)
    args.config_overrides = config_overrides
    from anomjax.compile_cache import enable_compile_cache

    enable_compile_cache()
    try:
        if getattr(args, "distributed", False):
            from anomjax.train import initialize_from_env

            initialize_from_env()
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("anomjax: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (every user error becomes one line)
        if not _is_user_error(err) or os.environ.get("ANOMJAX_DEBUG"):
            raise
        print(f"anomjax {args.command}: error: {err}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: ...``, status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = _Parser(prog="anomjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = sub.add_parser("fit", help="fit or train a method on one category's normal images")
    fit.add_argument("--method", required=True, help="method name (see `anomjax list`)")
    _add_data_args(fit, many=True)
    fit.add_argument("--backbone", help="backbone name (default: the method's)")
    fit.add_argument("--backbone-weights", help="weights file for the backbone")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a method hyper-parameter, e.g. coreset_ratio=0.01")
    fit.add_argument("--out", required=True,
                     help="run directory to write (new or empty; see --overwrite, --resume)")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out, whole")
    fit.add_argument("--seed", type=_seed, default=0)
    fit.add_argument("--batch-size", type=_batch_size, default=None,
                     help="global batch size (default: the method's paper batch size, else "
                          f"{DEFAULT_BATCH_SIZE})")
    fit.add_argument("--epochs", type=int, help="training epochs (methods that train)")
    fit.add_argument("--resume", action="store_true",
                     help="continue training from the latest checkpoint in --out")
    fit.add_argument("--allow-config-change", action="store_true",
                     help="with --resume: accept changed hyper-parameters (e.g. a lower "
                          "learning rate after a divergence)")
    fit.add_argument("--distributed", action="store_true",
                     help="join a multi-host job (jax.distributed.initialize from "
                          "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    fit.set_defaults(handler=cmd_fit)

    test = sub.add_parser("test", help="evaluate a fitted run on a category's test split")
    test.add_argument("run_dir")
    test.add_argument("--data", required=True, help="one category's folder")
    test.add_argument("--layout", help="dataset layout (default: detected)")
    test.add_argument("--batch-size", type=_batch_size, default=DEFAULT_BATCH_SIZE)
    test.add_argument("--json", help="write the metrics to this JSON file")
    test.add_argument("--maps", help="folder for maps.npz")
    test.add_argument("--overlays", help="folder for overlay PNGs")
    test.add_argument("--threshold-quantile", type=_quantile, metavar="Q",
                      help="set the image threshold to the Q-quantile of the good test "
                           "images' scores (e.g. 0.99; works without defective images) "
                           "instead of the F1-optimal one")
    test.set_defaults(handler=cmd_test)

    predict = sub.add_parser("predict", help="score new images with a fitted run")
    predict.add_argument("run_dir")
    predict.add_argument("paths", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="folder for heat maps and scores.csv")
    predict.add_argument("--threshold", type=_finite_float,
                         help="image threshold (default: the one `anomjax test` chose)")
    predict.add_argument("--batch-size", type=_batch_size, default=DEFAULT_BATCH_SIZE)
    predict.set_defaults(handler=cmd_predict)

    lister = sub.add_parser("list", help="list methods, backbones and dataset layouts")
    lister.set_defaults(handler=cmd_list)

    demo = sub.add_parser("demo", help="synthetic data -> PatchCore on Lite0 -> metrics")
    demo.add_argument("--out", default="anomjax-demo", help="folder for data, runs, overlays")
    demo.add_argument("--image-size", type=_image_side, default=128)
    demo.add_argument("--categories", help="comma-separated synthetic categories (default all)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=cmd_demo)

    from anomjax.experiment.cli import add_commands

    add_commands(sub)
    return parser


def _add_data_args(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("--data", required=True, action="append",
                            help="a category's folder; several --data train one model on the "
                                 "union of their training images (the multi-class setting)")
    else:
        parser.add_argument("--data", required=True, help="one category's folder")
    parser.add_argument("--layout", help="dataset layout (default: detected)")
    parser.add_argument("--image-size", type=_image_side, default=256,
                        help=f"resize to N x N (1 to {MAX_IMAGE_SIDE})")
    parser.add_argument("--crop", type=_image_side, help="then centre-crop to M x M")
    parser.add_argument("--resize-dtype", choices=RESIZE_DTYPES, default="uint8",
                        help="resize the 8-bit image, rounding to 8 bits (uint8, default: the "
                             "authors' PIL pipelines) or its [0, 1] floats (float32: "
                             "torchvision on tensors, as anomalib); test and predict reuse it")


def _bounded_int(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{what} must be in [{low}, {high}], got {value}")
    return value


def _image_side(text: str) -> int:
    return _bounded_int(text, "an image side", 1, MAX_IMAGE_SIDE)


def _batch_size(text: str) -> int:
    return _bounded_int(text, "the batch size", 1, MAX_BATCH_SIZE)


def _seed(text: str) -> int:
    return _bounded_int(text, "the seed", -(2**63), 2**63 - 1)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _quantile(text: str) -> float:
    value = _finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a quantile must be in [0, 1], got {text!r}")
    return value


# ---------------------------------------------------------------------------- commands


def cmd_fit(args: argparse.Namespace) -> int:
    from anomjax.data.multiclass import open_multiclass

    fields = _method_fields(args.method, args.backbone, args.backbone_weights)
    method = make_method(args.method, _parse_sets(args.set), **fields)
    if args.allow_config_change and not args.resume:
        raise UsageError("--allow-config-change applies only with --resume")
    if args.overwrite and args.resume:
        raise UsageError("--overwrite and --resume contradict each other: pick one")
    batch_size = args.batch_size or int(getattr(method, "default_batch_size",
                                                DEFAULT_BATCH_SIZE))
    dataset, _ = open_multiclass(args.data, layout=args.layout, image_size=args.image_size,
                                 crop=args.crop, resize_dtype=args.resize_dtype)
    primary = jax.process_index() == 0
    out = Path(args.out)
    with _run_folder_lock(out, primary):
        if primary:
            prepare_run_dir(out, resume=args.resume, overwrite=args.overwrite)
        if jax.process_count() > 1:  # nobody writes before process 0 has prepared --out
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("anomjax fit: run folder ready")
        state, seconds = fit_method(method, dataset.train, seed=args.seed,
                                    batch_size=batch_size, run_dir=out, epochs=args.epochs,
                                    resume=args.resume,
                                    allow_config_change=args.allow_config_change)
        data = [str(Path(d).resolve()) for d in args.data]
        extra = {"data": data[0] if len(data) == 1 else data, "layout": dataset.layout,
                 "image_size": args.image_size, "crop": args.crop,
                 "resize_dtype": args.resize_dtype, "seed": args.seed, "batch_size": batch_size,
                 "n_train": len(dataset.train),
                 "fit_seconds": round(seconds, 3), "fit_peak_rss_mb": peak_rss_mb()}
        run_dir = save_run(out, method, state, extra)
    if primary:
        print(f"fitted {method.name} on {len(dataset.train)} images in {seconds:.1f} s -> "
              f"{run_dir}")
    return 0


def _run_folder_lock(run_dir: Path, primary: bool) -> Any:
    """The run folder's lock (taken by process 0 only: the others share its run)."""
    if not primary:
        return contextlib.nullcontext()
    check_writable_dir(run_dir, "--out")
    return run_lock(run_dir)


def fit_method(method: Any, train_split: Any, *, seed: int, batch_size: int, run_dir: Path,
               epochs: int | None = None, resume: bool = False,
               allow_config_change: bool = False) -> tuple[Any, float]:
    """Fit (one pass) or train (``kind == "train"``) ``method``; returns ``(state, seconds)``."""
    key = jax.random.key(seed)
    start = time.perf_counter()
    if method.kind == "train":
        from anomjax.train import train_method

        state = train_method(method, key, train_split, epochs=epochs, batch_size=batch_size,
                             run_dir=run_dir, resume=resume,
                             allow_config_change=allow_config_change)
    else:
        if epochs is not None or resume:
            raise UsageError(f"{method.name} is fitted in one pass: --epochs/--resume do not "
                             "apply")
        with tqdm(train_split.batches(batch_size), desc=f"fitting {method.name}",
                  unit="batch", total=-(-len(train_split) // batch_size),
                  disable=jax.process_index() != 0) as batches:
            state = method.fit(key, batches)
            jax.block_until_ready(state)
    return state, time.perf_counter() - start


def cmd_test(args: argparse.Namespace) -> int:
    from anomjax.data import open_dataset

    if args.json:
        check_writable_file(args.json, "--json")
    for flag, folder in (("--maps", args.maps), ("--overlays", args.overlays)):
        if folder:
            check_writable_dir(folder, flag)
    _check_image_settings(args.run_dir, load_method(args.run_dir)[1])
    with run_lock(args.run_dir):
        method, state, config = load_run(args.run_dir)
        dataset = open_dataset(args.data, layout=args.layout, image_size=config["image_size"],
                               crop=config.get("crop"), resize_dtype=_resize_dtype(config))
        result = evaluate(method, state, dataset.test, batch_size=args.batch_size,
                          maps_dir=args.maps, overlays_dir=args.overlays,
                          threshold_quantile=args.threshold_quantile)
        if result["threshold"] is not None:
            write_json(Path(args.run_dir) / THRESHOLD_FILE, result["threshold"])
    record = metrics_record(method, config, result)
    print(format_table([record]))
    for defect, values in result["per_defect"].items():
        print(f"  {defect:<16}" + "  ".join(f"{k}={values[k]:.4f}" for k in
                                             ("image_auroc", "pixel_auroc", "pixel_aupro")))
    if result["threshold"] is None:
        kept = ("the existing one is kept" if (Path(args.run_dir) / THRESHOLD_FILE).exists()
                else "predict needs --threshold until one is written")
        print(f"anomjax test: warning: no threshold written ({kept}): "
              f"{result['threshold_note']}", file=sys.stderr)
    else:
        print(f"image threshold {result['threshold']['image_threshold']:.4g} "
              f"({result['threshold_note']}) -> {Path(args.run_dir) / THRESHOLD_FILE}")
    if args.json:
        write_json(Path(args.json), {**record, "per_defect": result["per_defect"]})
    return 0


def _resize_dtype(config: dict[str, Any]) -> str:
    """The run's ``resize_dtype`` (runs saved before it was recorded resized in uint8)."""
    return config.get("resize_dtype", "uint8")


def _check_image_settings(run_dir: str, config: dict[str, Any]) -> None:
    """A run's ``image_size``/``crop`` must be sizes the CLI accepts (a crafted config.json
    could ask for 100000 px), and its ``resize_dtype`` one of :data:`RESIZE_DTYPES`."""
    from anomjax.data.transforms import as_hw

    if _resize_dtype(config) not in RESIZE_DTYPES:
        raise RunError(f"{Path(run_dir) / 'config.json'}: invalid resize_dtype "
                       f"{_resize_dtype(config)!r}, expected one of {RESIZE_DTYPES}")

    for key in ("image_size", "crop"):
        value = config.get(key)
        if value is None and key == "crop":
            continue
        try:
            sides = as_hw(tuple(value) if isinstance(value, list) else value)
        except (TypeError, ValueError) as err:
            raise RunError(f"{Path(run_dir) / 'config.json'}: invalid {key} ({err})") from None
        if max(sides) > MAX_IMAGE_SIDE:
            raise RunError(f"{Path(run_dir) / 'config.json'}: {key}={value!r} exceeds "
                           f"{MAX_IMAGE_SIDE} px")


def metrics_record(method: Any, config: dict[str, Any], result: dict[str, Any]) -> dict:
    """The flat metrics JSON of one test run (keys fixed by the CLI's contract)."""
    record = {k: result[k] for k in METRIC_KEYS}
    record.update(method=method.name, backbone=getattr(method, "backbone", None),
                  image_size=config["image_size"], n_train=config["n_train"],
                  n_test=result["n_test"], fit_seconds=config["fit_seconds"],
                  test_seconds=result["test_seconds"],
                  images_per_second=result["images_per_second"],
                  peak_rss_mb=max(result["peak_rss_mb"], config.get("fit_peak_rss_mb", 0.0)))
    return record


def cmd_predict(args: argparse.Namespace) -> int:
    from anomjax.data import expand_image_paths, iter_image_batches
    from anomjax.visualize import save_heatmap

    _check_image_settings(args.run_dir, load_method(args.run_dir)[1])
    threshold = _predict_threshold(args)
    paths = expand_image_paths(args.paths)
    _check_utf8_names(paths)
    out = Path(args.out)
    check_writable_dir(out, "--out")
    method, state, config = load_run(args.run_dir)
    score_fn = jax.jit(method.score)
    rows = []
    batches = iter_image_batches(paths, args.batch_size, config["image_size"], config.get("crop"),
                                 resize_dtype=_resize_dtype(config))
    with tqdm(total=len(paths), desc=f"predicting with {method.name}", unit="img") as bar:
        for images, names in batches:
            n = len(names)
            if n < args.batch_size:
                pad = np.zeros((args.batch_size - n, *images.shape[1:]), images.dtype)
                images = np.concatenate([images, pad])
            scores = score_fn(state, images)
            for path, image_score, heat in zip(names, np.asarray(scores.image)[:n],
                                               np.asarray(scores.maps)[:n], strict=True):
                stem = f"{len(rows):04d}_{Path(path).stem}"
                save_heatmap(out / f"{stem}_heatmap.png", heat, threshold["pixel_min"],
                             threshold["pixel_max"])
                np.save(out / f"{stem}_map.npy", heat.astype(np.float32))
                rows.append({"path": path, "score": float(image_score),
                             "normalized_score": normalized(float(image_score), threshold),
                             "anomalous": int(image_score >= threshold["image_threshold"]),
                             "heatmap": f"{stem}_heatmap.png"})
            bar.update(n)
    with atomic_writer(out / "scores.csv", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"scored {len(rows)} images, {flagged} above the threshold "
          f"{threshold['image_threshold']:.4g} -> {out / 'scores.csv'}")
    return 0


def _check_utf8_names(paths: Sequence[str]) -> None:
    """``scores.csv`` is UTF-8: refuse, before any work, a file name that cannot be written."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{os.fsencode(path)!r}: the file name is not valid UTF-8, so it "
                             "cannot be written to scores.csv; rename the file") from None


def normalized(score: float, threshold: dict[str, float]) -> float:
    """Min-max normalisation around the threshold: threshold -> 0.5, clipped to [0, 1]."""
    from anomjax.metrics import NormalizationStats, normalize

    stats = NormalizationStats(threshold=np.float32(threshold["image_threshold"]),
                               min=np.float32(threshold["image_min"]),
                               max=np.float32(threshold["image_max"]))
    return float(normalize(np.float32(score), stats))


def _predict_threshold(args: argparse.Namespace) -> dict[str, float]:
    threshold = load_threshold(args.run_dir)
    if threshold is None and args.threshold is None:
        raise RunError(f"{args.run_dir} has no {THRESHOLD_FILE}: run `anomjax test "
                       f"{args.run_dir} --data DIR` first (it picks the F1-optimal threshold, "
                       "or with --threshold-quantile Q one from good images only) or pass "
                       "--threshold")
    if threshold is None:
        t = float(args.threshold)
        spread = max(abs(t), 1e-6)
        threshold = {"image_threshold": t, "image_min": t - spread, "image_max": t + spread,
                     "pixel_min": 0.0, "pixel_max": t + spread}
    if args.threshold is not None:
        threshold["image_threshold"] = float(args.threshold)
    return threshold


def cmd_list(args: argparse.Namespace) -> int:
    from anomjax.backbones import backbone_names, find_weights
    from anomjax.data import LAYOUTS
    from anomjax.data.synthetic import CATEGORIES

    print("methods:")
    for name in method_names():
        cls = method_class(name)
        module_doc = sys.modules[cls.__module__].__doc__ or ""
        summary = module_doc.strip().splitlines()[0] if module_doc.strip() else ""
        print(f"  {name:<22} {cls.kind:<6} {summary}")
    print("backbones:")
    for name in backbone_names():
        weights = find_weights(name)
        print(f"  {name:<22} {f'weights: {weights}' if weights else 'weights: not found'}")
    print("dataset layouts:")
    print("  " + ", ".join(LAYOUTS))
    print("synthetic categories:")
    print("  " + ", ".join(CATEGORIES))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from anomjax.data import open_dataset
    from anomjax.data.synthetic import CATEGORIES, write_mvtec

    categories = args.categories.split(",") if args.categories else list(CATEGORIES)
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise UsageError(f"unknown synthetic categories {unknown}; known: {list(CATEGORIES)}")
    out = Path(args.out)
    data_root = out / "data"
    print(f"writing the synthetic dataset ({', '.join(categories)}) to {data_root}")
    write_mvtec(data_root, categories=categories, image_size=args.image_size, seed=args.seed)
    method = make_method("patchcore")
    records = []
    for category in categories:
        dataset = open_dataset(data_root / category, image_size=args.image_size)
        state, seconds = fit_method(method, dataset.train, seed=args.seed,
                                    batch_size=DEFAULT_BATCH_SIZE,
                                    run_dir=out / "runs" / category)
        extra = {"data": str((data_root / category).resolve()), "layout": dataset.layout,
                 "image_size": args.image_size, "crop": None, "resize_dtype": "uint8",
                 "seed": args.seed, "n_train": len(dataset.train), "fit_seconds": round(seconds, 3),
                 "fit_peak_rss_mb": peak_rss_mb()}
        save_run(out / "runs" / category, method, state, extra)
        result = evaluate(method, state, dataset.test,
                          overlays_dir=out / "overlays" / category)
        record = metrics_record(method, extra, result)
        records.append({"category": category, **record})
    print(format_table(records))
    print(f"overlays: {out / 'overlays'}   runs: {out / 'runs'}")
    return 0


# ---------------------------------------------------------------------------- helpers


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of metrics records (percentages for metrics)."""
    cols = [c for c in ("category", "method", "backbone", "image_size") if c in records[0]]
    cols += ["image_auroc", "pixel_auroc", "pixel_aupro", "image_f1max", "fit_seconds",
             "test_seconds", "peak_rss_mb"]
    rows = [[_cell(r.get(c), c) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float) and column in METRIC_KEYS:
        return f"{100 * value:.1f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    sets = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        sets[key.strip()] = value.strip()
    return sets


def _method_fields(name: str, backbone: str | None, weights: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(method_class(name))}
    for flag, field, value in (("--backbone", "backbone", backbone),
                               ("--backbone-weights", "backbone_weights", weights)):
        if value is None:
            continue
        if field not in names:
            raise UsageError(f"{flag}: method {name!r} takes no backbone")
        fields[field] = value
    return fields


def _is_user_error(err: Exception) -> bool:
    from anomjax.backbones import WeightsNotFoundError
    from anomjax.data import DataError

    user_errors = (UsageError, RunError, DataError, WeightsNotFoundError, FileNotFoundError,
                   PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
                   ValueError, FloatingPointError)
    return isinstance(err, user_errors)


if __name__ == "__main__":
    sys.exit(main())
