"""The experiment commands of ``anomjax``: ``run``, ``sweep``, ``benchmark``.

    anomjax run --config experiments/configs/stpm.py[:arg] --config.data=DIR --out RUN
    anomjax sweep --config experiments/configs/stpm.py --config.data=DIR \\
        --sweep seed=0,1 [--zip f=a,b --zip g=c,d] --out SWEEP
    anomjax benchmark --data ROOT --method patchcore stpm [--protocol FILE] --out BENCH

Overrides are written ``--config.FIELD=VALUE`` (any number of them; fields are dotted,
``--config.method.sigma=2``). ``python -m anomjax.experiment`` is ``anomjax run``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from anomjax.experiment.config import apply_overrides, load_config


def add_commands(sub: Any) -> None:
    """Register the ``run``, ``sweep`` and ``benchmark`` sub-commands on ``sub``."""
    run = sub.add_parser("run", help="one experiment from a config file (fit, save, test)")
    _add_config_args(run)
    run.add_argument("--out", required=True, help="run directory")
    run.set_defaults(handler=cmd_run)

    sweep = sub.add_parser("sweep", help="many runs of a config over swept fields")
    _add_config_args(sweep)
    sweep.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2",
                       help="sweep a field over values (several --sweep: their product)")
    sweep.add_argument("--zip", action="append", default=[], metavar="FIELD=V1,V2",
                       help="sweep fields together (equal numbers of values)")
    sweep.add_argument("--out", required=True, help="sweep directory")
    _add_process_args(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    bench = sub.add_parser("benchmark", help="every category of a dataset root, and the mean")
    bench.add_argument("--data", required=True, help="dataset root holding category folders")
    bench.add_argument("--method", nargs="+", required=True, help="method names")
    bench.add_argument("--protocol", help="protocol config file (e.g. "
                       "experiments/configs/mvtec_ad_256.py): image size, crop, categories")
    bench.add_argument("--image-size", type=int, help="override the protocol's image size")
    bench.add_argument("--epochs", type=int, help="training epochs of methods that train")
    bench.add_argument("--out", required=True, help="benchmark directory")
    _add_process_args(bench)
    bench.set_defaults(handler=cmd_benchmark)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]",
                        help="config file defining get_config(arg=None)")
    parser.add_argument("--seeds", type=int, metavar="K",
                        help="train K independent models in one vmapped step (config.seeds)")


def _add_process_args(parser: argparse.ArgumentParser) -> None:
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
        import jax

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    return index, count


def cmd_run(args: argparse.Namespace) -> int:
    from anomjax.experiment.run import run_experiment

    records = run_experiment(_config(args), args.out)
    for r in records:
        print(f"{r['method']} on {r['category']}: image AUROC {r['image_auroc']:.4f}, "
              f"pixel AUROC {r['pixel_auroc']:.4f}, AUPRO {r['pixel_aupro']:.4f} -> {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from anomjax.experiment.report import write_report
    from anomjax.experiment.sweep import parse_sweep_args, run_sweep

    config = _config(args)
    with config.unlocked():
        config.sweep.update(parse_sweep_args(args.sweep, config))
        config.sweep_zip.update(parse_sweep_args(args.zip, config))
    index, count = _processes(args)
    statuses = list(run_sweep(config, args.out, process_index=index, process_count=count))
    done = sum(s == "done" for _, s in statuses)
    print(f"sweep {args.out}: {done} runs trained, {len(statuses) - done} already finished "
          f"(process {index} of {count})")
    if index == 0:
        paths = write_report(args.out)
        print(f"results: {paths['csv']}  summary: {paths['summary']}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from anomjax.experiment.benchmark import run_benchmark

    protocol = load_config(args.protocol) if args.protocol else None
    overrides: dict[str, Any] = {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    index, count = _processes(args)
    statuses = list(run_benchmark(args.data, args.method, args.out, protocol=protocol,
                                  overrides=overrides, process_index=index,
                                  process_count=count))
    done = sum(s == "done" for _, s in statuses)
    print(f"benchmark {args.out}: {done} runs trained, {len(statuses) - done} already "
          f"finished -> {args.out}/benchmark.md")
    return 0
