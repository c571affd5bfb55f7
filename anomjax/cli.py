"""The ``anomjax`` command: argument parsing and printing over the run API.

``fit``, ``test``, ``predict``, ``export``, ``list``, ``demo`` call :mod:`anomjax.runs`; ``run``,
``sweep``, ``benchmark`` call :mod:`anomjax.experiment`. Nothing else lives here, and no
library module imports this one.

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
import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from anomjax import runs
from anomjax.compile_cache import enable_compile_cache
from anomjax.data.transforms import RESIZE_DTYPES
from anomjax.experiment import (
    add_axes,
    apply_overrides,
    category_folders,
    load_config,
    parse_sweep_args,
    run_benchmark,
    run_experiment,
    run_sweep,
    write_report,
)
from anomjax.methods.base import make_method, method_class, method_names
from anomjax.methods.protocol import overridden_hooks
from anomjax.run_folder import THRESHOLD_FILE, RunError
from anomjax.runs import DEFAULT_BATCH_SIZE, MAX_IMAGE_SIDE, METRIC_KEYS, UsageError
from anomjax.train import EngineSettings, initialize_from_env
from anomjax.train.settings import COMPUTE_DTYPES

MAX_BATCH_SIZE = 4096


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anomjax`` console script."""
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
    enable_compile_cache()
    try:
        if getattr(args, "distributed", False):
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
    fit.add_argument("--epochs", type=_count, help="training budget in epochs (methods that "
                     "train; default: the paper's)")
    fit.add_argument("--steps", type=_count, help="training budget in optimiser steps instead "
                     "of epochs (the last epoch may stop part-way)")
    fit.add_argument("--resume", action="store_true",
                     help="continue training from the latest checkpoint in --out")
    fit.add_argument("--allow-config-change", action="store_true",
                     help="with --resume: accept changed hyper-parameters (e.g. a lower "
                          "learning rate after a divergence)")
    engine = fit.add_argument_group("training engine (methods that train)")
    engine.add_argument("--compute-dtype", choices=COMPUTE_DTYPES,
                        help="bfloat16: the loss in bfloat16, float32 master parameters")
    engine.add_argument("--log-every", type=_count, default=10, metavar="N",
                        help="log the step metrics every N steps (default 10)")
    engine.add_argument("--checkpoint-every", type=_count, metavar="N",
                        help="also checkpoint every N steps (default: each epoch's end)")
    engine.add_argument("--keep", type=_count, default=3, metavar="N",
                        help="checkpoints to keep (default 3)")
    engine.add_argument("--frozen-cache-mb", type=_finite_float, default=2048.0, metavar="MB",
                        help="host memory for cached frozen features (0: none; default 2048)")
    engine.add_argument("--accumulate", type=_count, default=1, metavar="K",
                        help="average the gradients of K batches per optimiser update")
    engine.add_argument("--profile-steps", type=_step_window, metavar="A:B",
                        help="a jax.profiler trace of steps A+1..B into RUN/profile")
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
    _add_tile_args(test)
    test.set_defaults(handler=cmd_test)

    predict = sub.add_parser("predict", help="score new images with a fitted run or an "
                             "exported scorer")
    predict.add_argument("run_dir", help="a run folder, or a folder written by `anomjax "
                         "export` (scored without the method's code)")
    predict.add_argument("paths", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="folder for heat maps and scores.csv")
    predict.add_argument("--threshold", type=_finite_float,
                         help="image threshold (default: the one `anomjax test` chose)")
    predict.add_argument("--batch-size", type=_batch_size, default=DEFAULT_BATCH_SIZE,
                         help="images (or, with --tile-size, tiles) per call")
    _add_tile_args(predict)
    predict.set_defaults(handler=cmd_predict)

    export = sub.add_parser("export", help="write a run's scorer as a self-contained folder "
                            "(jax.export for CPU/CUDA/TPU, safetensors, manifest)")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="folder to write (new or empty)")
    export.add_argument("--threshold", type=_finite_float,
                        help="image threshold (default: the one `anomjax test` chose)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace the exported scorer already in --out")
    export.set_defaults(handler=cmd_export)

    lister = sub.add_parser("list", help="list methods, backbones and dataset layouts")
    lister.set_defaults(handler=cmd_list)

    demo = sub.add_parser("demo", help="synthetic data -> PatchCore on Lite0 -> metrics")
    demo.add_argument("--out", default="anomjax-demo", help="folder for data, runs, overlays")
    demo.add_argument("--image-size", type=_image_side, default=128)
    demo.add_argument("--categories", help="comma-separated synthetic categories (default all)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=cmd_demo)

    _add_experiment_commands(sub)
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


def _add_tile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile-size", type=_image_side, metavar="N",
                        help="score images at their own size by overlapping N x N tiles (N: "
                             "the run's input size), blending the tile maps (mean)")
    parser.add_argument("--tile-stride", type=_image_side, metavar="S",
                        help="pixels between tiles (default: the tile size, no overlap)")


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


def _step_window(text: str) -> tuple[int, int]:
    first, sep, last = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected A:B (steps A+1 to B), got {text!r}")
    return (_bounded_int(first, "a step", 0, 10**9), _bounded_int(last, "a step", 1, 10**9))


def _engine(args: argparse.Namespace) -> EngineSettings:
    return EngineSettings(compute_dtype=args.compute_dtype, log_every=args.log_every,
                          checkpoint_every=args.checkpoint_every, keep=args.keep,
                          frozen_cache_mb=args.frozen_cache_mb, accumulate=args.accumulate,
                          profile_steps=args.profile_steps)


def _count(text: str) -> int:
    return _bounded_int(text, "a count", 1, 10**9)


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
    fields = _method_fields(args.method, args.backbone, args.backbone_weights)
    method = make_method(args.method, _parse_sets(args.set), **fields)
    fitted = runs.fit(method, args.data, args.out, layout=args.layout,
                      image_size=args.image_size, crop=args.crop,
                      resize_dtype=args.resize_dtype, seed=args.seed,
                      batch_size=args.batch_size, epochs=args.epochs, steps=args.steps,
                      resume=args.resume, engine=_engine(args),
                      overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    if jax.process_index() == 0:
        print(f"fitted {method.name} on {fitted.config['n_train']} images in "
              f"{fitted.seconds:.1f} s -> {fitted.run_dir}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    tested = runs.test(args.run_dir, args.data, layout=args.layout,
                       batch_size=args.batch_size, json_path=args.json, maps_dir=args.maps,
                       overlays_dir=args.overlays, threshold_quantile=args.threshold_quantile,
                       tile_size=args.tile_size, tile_stride=args.tile_stride)
    print(format_table([tested.record]))
    for defect, values in tested.per_defect.items():
        print(f"  {defect:<16}" + "  ".join(f"{k}={values[k]:.4f}" for k in
                                             ("image_auroc", "pixel_auroc", "pixel_aupro")))
    threshold_file = Path(args.run_dir) / THRESHOLD_FILE
    for warning in tested.warnings:
        print(f"anomjax test: warning: {warning}", file=sys.stderr)
    if tested.threshold is None:
        kept = ("the existing one is kept" if threshold_file.exists()
                else "predict needs --threshold until one is written")
        print(f"anomjax test: warning: no threshold written ({kept}): "
              f"{tested.threshold_note}", file=sys.stderr)
    else:
        print(f"image threshold {tested.threshold['image_threshold']:.4g} "
              f"({tested.threshold_note}, category {tested.threshold['category']}) -> "
              f"{threshold_file}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    rows = runs.predict(args.run_dir, args.paths, args.out, threshold=args.threshold,
                        batch_size=args.batch_size, tile_size=args.tile_size,
                        tile_stride=args.tile_stride)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"scored {len(rows)} images, {flagged} above the threshold -> "
          f"{Path(args.out) / 'scores.csv'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    manifest = runs.export(args.run_dir, args.out, threshold=args.threshold,
                           overwrite=args.overwrite)
    size = "x".join(map(str, manifest["input_size"]))
    print(f"exported {manifest['method']} ({size} {manifest['input_dtype']} images, "
          f"{', '.join(manifest['platforms'])}) -> {args.out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from anomjax.backbones import backbone_names, find_weights
    from anomjax.data import LAYOUTS
    from anomjax.data.synthetic import CATEGORIES

    print("methods:")
    for name in method_names():
        cls = method_class(name)
        module_doc = sys.modules[cls.__module__].__doc__ or ""
        summary = module_doc.strip().splitlines()[0] if module_doc.strip() else ""
        hooks = ", ".join(overridden_hooks(cls))
        print(f"  {name:<22} {cls.kind:<6} {summary}" + (f"  [hooks: {hooks}]" if hooks else ""))
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
        run_dir = out / "runs" / category
        runs.fit(method, data_root / category, run_dir, image_size=args.image_size,
                 seed=args.seed, batch_size=DEFAULT_BATCH_SIZE, overwrite=run_dir.exists())
        tested = runs.test(run_dir, data_root / category,
                           overlays_dir=out / "overlays" / category)
        records.append({"category": category, **tested.record})
    print(format_table(records))
    print(f"overlays: {out / 'overlays'}   runs: {out / 'runs'}")
    return 0


# ---------------------------------------------------------------------------- experiments


def _add_experiment_commands(sub: Any) -> None:
    """Register the ``run``, ``sweep`` and ``benchmark`` sub-commands on ``sub``."""
    run = sub.add_parser("run", help="one experiment from a config file (fit, save, test)")
    _add_config_args(run)
    run.add_argument("--out", required=True,
                     help="run directory to write (new or empty; see --overwrite, --resume)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out, whole")
    run.add_argument("--resume", action="store_true",
                     help="continue a killed run in --out (the same config)")
    run.set_defaults(handler=cmd_run)

    sweep = sub.add_parser("sweep", help="many runs of a config over swept fields")
    _add_config_args(sweep)
    sweep.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2",
                       help="sweep a field over values (several --sweep: their product)")
    sweep.add_argument("--zip", action="append", default=[], metavar="FIELD=V1,V2",
                       help="sweep fields together (equal numbers of values)")
    sweep.add_argument("--out", required=True, help="sweep directory")
    sweep.add_argument("--overwrite", action="store_true",
                       help="start the sweep in --out over (its runs and results are deleted)")
    sweep.add_argument("--retry-failed", action="store_true",
                       help="train again the runs recorded as failed (diverged)")
    _add_process_args(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    bench = sub.add_parser("benchmark", help="every category of a dataset root, and the mean")
    bench.add_argument("--data", required=True, help="dataset root holding category folders")
    bench.add_argument("--method", nargs="+", required=True, help="method names")
    bench.add_argument("--protocol", help="protocol config file (e.g. "
                       "experiments/configs/mvtec_ad_256.py): image size, crop, categories")
    bench.add_argument("--image-size", type=int, help="override the protocol's image size")
    bench.add_argument("--epochs", type=_count, help="training epochs of methods that train")
    bench.add_argument("--steps", type=_count,
                       help="training budget in optimiser steps instead of epochs")
    bench.add_argument("--out", required=True, help="benchmark directory")
    _add_process_args(bench)
    bench.set_defaults(handler=cmd_benchmark)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]",
                        help="config file defining get_config(arg=None)")
    parser.add_argument("--seeds", type=int, metavar="K",
                        help="train K independent models in one vmapped step (config.seeds)")


def _add_process_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distributed", action="store_true",
                        help="join a jax.distributed job (JAX_COORDINATOR_ADDRESS, "
                             "JAX_NUM_PROCESSES, JAX_PROCESS_ID): every process takes part in "
                             "every run, on the devices of all processes")
    parser.add_argument("--process-index", type=int, default=None,
                        help="this process's share (default: $ANOMJAX_PROCESS_INDEX, or "
                             "jax.process_index() under jax.distributed, else 0)")
    parser.add_argument("--process-count", type=int, default=None,
                        help="number of processes sharing the work (default: "
                             "$ANOMJAX_PROCESS_COUNT, or jax.process_count(), else 1)")


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--config.FIELD=VALUE`` (and ``--config.FIELD VALUE``) from other args."""
    rest, overrides = [], []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--config."):
            body = item[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(items):
                    raise ValueError(f"{item}: expected --config.FIELD=VALUE")
                body = f"{body}={items[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def _config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    config = load_config(args.config)
    apply_overrides(config, getattr(args, "config_overrides", []))
    if args.seeds is not None:
        apply_overrides(config, [f"seeds={args.seeds}"])
    return config


def _processes(args: argparse.Namespace) -> tuple[int, int]:
    index, count = args.process_index, args.process_count
    if index is None and "ANOMJAX_PROCESS_INDEX" in os.environ:
        index = int(os.environ["ANOMJAX_PROCESS_INDEX"])
    if count is None and "ANOMJAX_PROCESS_COUNT" in os.environ:
        count = int(os.environ["ANOMJAX_PROCESS_COUNT"])
    if index is None or count is None:
        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    return index, count


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.seeds > 1 or config.learning_rates:
        size = max(config.seeds, len(config.learning_rates or ()))
        print(f"anomjax run: training a population of {size} members in one vmapped step "
              f"(initialising each member first)", file=sys.stderr, flush=True)
    records = run_experiment(config, args.out, overwrite=args.overwrite, resume=args.resume)
    for r in records:
        who = "" if "member" not in r else f" member {r['member']}" + (
            f" (learning rate {r['learning_rate']:g})" if "learning_rate" in r else "")
        if r.get("status") == "failed":
            print(f"anomjax run: warning: {r['method']}{who}: {r['error']}", file=sys.stderr)
            continue
        print(f"{r['method']}{who} on {r['category']}: image AUROC {r['image_auroc']:.4f}, "
              f"pixel AUROC {r['pixel_auroc']:.4f}, AUPRO {r['pixel_aupro']:.4f} -> {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    config = _config(args)
    add_axes(config.sweep, parse_sweep_args(args.sweep, config))
    add_axes(config.sweep_zip, parse_sweep_args(args.zip, config))
    index, count = _processes(args)
    statuses = list(run_sweep(config, args.out, process_index=index, process_count=count,
                              restart=args.overwrite, retry_failed=args.retry_failed))
    print(f"sweep {args.out} (process {index} of {count}): {_status_counts(statuses)}")
    for run, status in statuses:
        if status in ("failed", "busy"):
            print(f"anomjax sweep: warning: run {run} {status}"
                  + (" (another process is training it)" if status == "busy" else
                     " (diverged; recorded in results.jsonl, --retry-failed trains it again)"),
                  file=sys.stderr)
    if index == 0:
        paths = write_report(args.out)
        print(f"results: {paths['csv']}  summary: {paths['summary']}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    protocol = load_config(args.protocol) if args.protocol else None
    overrides: dict[str, Any] = {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.steps is not None:
        overrides["steps"] = args.steps
    index, count = _processes(args)
    _, skipped = category_folders(args.data, None, tuple(protocol.get("categories", ()))
                                  if protocol else ())
    for name, reason in skipped.items():
        print(f"anomjax benchmark: warning: skipping {Path(args.data) / name}: {reason}",
              file=sys.stderr)
    statuses = list(run_benchmark(args.data, args.method, args.out, protocol=protocol,
                                  overrides=overrides, process_index=index,
                                  process_count=count))
    print(f"benchmark {args.out}: {_status_counts(statuses)} -> {args.out}/benchmark.md")
    return 0


def _status_counts(statuses: list[tuple[str, str]]) -> str:
    """``"2 runs trained, 1 already finished, 1 failed"`` of ``(run, status)`` pairs."""
    words = {"done": "trained", "skipped": "already finished", "failed": "failed",
             "busy": "busy in another process"}
    counts = {w: sum(s == k for _, s in statuses) for k, w in words.items()}
    return ", ".join(f"{n} run{'s' * (n != 1)} {w}" for w, n in counts.items()
                     if n or w == "trained")


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
