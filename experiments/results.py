"""Results table: fit and evaluate registered methods on the real and synthetic datasets.

    python experiments/results.py [--methods patchcore padim so_padim spade]
        [--datasets mvtec3d_tire magnetic_tile synthetic] [--image-size 256]
        [--set spade:grid_stride=8] [--output experiments/RESULTS.md]

Datasets: ``mvtec3d_tire`` and ``magnetic_tile`` from ``--data-root`` (default
``../shared/data``, never copied), and ``synthetic`` (every category of
:mod:`anomjax.data.synthetic`, or one as ``synthetic/<category>``) written as MVTec-style
folders to a temporary directory at the evaluation image size.

Every (method, dataset) row runs in its own Python process, so its peak memory (maximum
resident set size, JAX runtime and backbone included) is its own. "fit s" is the wall time
of ``method.fit`` (or ``train_method``) over the training split: image loading, feature
extraction, jit compilation and the model itself. "test s" is
:func:`anomjax.evaluate.evaluate`'s scoring time of the test split (loading, compilation,
scoring). Rows are kept in ``--json`` (default ``experiments/results.json``): a run replaces
the rows of the (method, dataset) pairs it runs and keeps the others, and ``RESULTS.md`` shows
them all; with ``--resume`` pairs already stored with the same settings are not rerun.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ISSUE4_METHODS = ("patchcore", "padim", "so_padim", "spade")
ISSUE5_METHODS = ("stpm", "reverse_distillation", "mkd", "uninformed_students", "dfr")
FLOW_METHODS = ("differnet", "cflow", "csflow", "fastflow")
ISSUE13_METHODS = ("riad", "cutpaste", "draem", "patch_svdd", "deep_svdd", "fcdd")
REAL_DATASETS = ("mvtec3d_tire", "magnetic_tile")

# Deviations from each paper worth reading next to its numbers (details: the docstrings).
NOTES = {
    "patchcore": "Lite0 stage3+stage5 (paper: WRN50 layer2+3); the authors' 3x3 patch pooling "
                 "(C x 3 x 3 flattened, pooled to 1024 per layer, then to 1024; bank in its "
                 "872-d compact basis); greedy coreset on 128-d projection; Euclidean distance "
                 "and Eq. 7 image score (paper; the authors' code: squared L2, max)",
    "padim": "Lite0 stage2/3/5 (paper: R18/WRN50 layer1-3), d = all 176 channels (paper: "
             "random 100 of 448 / 550 of 1792)",
    "so_padim": "Lite0 stage2/3/5 (paper: R18/WRN50 layer1-3), semi-orthogonal k = WRN50 "
                "ratio of 176",
    "spade": "Lite0 pyramid stage2/3/5 (paper: WRN50 layer1-3), per-layer NN maps averaged "
             "(reference code), image descriptor = pooled 1280-ch head; image score = mean "
             "distance to K nearest images",
    "stpm": "Lite0 stage2/3/5 teacher and random student (paper: R18 layer1-3); SGD lr 0.4; "
            "student BN statistics recomputed after training (precise BN); from code fca4ebc "
            "the authors' loss (mean over batch and positions, before: B/2 times it)",
    "reverse_distillation": "Lite0 stage2/3/4 encoder, basic-block OCBE and decoder (paper: "
                            "WRN50 with bottlenecks); Adam lr 0.005; from code f14b6b2 decoder "
                            "stages end without ReLU and the official flattened cosine loss "
                            "(before: final ReLU, per-position loss)",
    "mkd": "Lite0 stage2/3/5/7 source (paper: VGG16); small VGG cloner; map = guided-backprop "
           "input gradient",
    "uninformed_students": "teacher distilled from Lite0 patch features of the training images "
                           "(paper: R18 on ImageNet); 17/33/65 patch students, M=3; from code "
                           "f14b6b2 fresh teacher crops every step (before: 4096 fixed crops)",
    "dfr": "Lite0 stage1-4 regional features (paper: VGG19 relu1_1-relu4_4); 1x1 conv AE, "
           "latent by PCA 90 % (from code f14b6b2 on the first 10 training images, before: "
           "the first batch)",
    "differnet": "Lite0 stage7 pooled at 3 scales (paper: AlexNet); 8 GLOW blocks, FC subnets; "
                 "image score over evenly spaced test rotations; map = input-gradient map",
    "cflow": "Lite0 stage3/5/7 (paper: WRN50 layer2-4); 8 conditional all-in-one blocks, "
             "128-d positional encoding; one vectorised step over all fibres of a batch "
             "(authors: a step per 256); maps normalised by the training maximum",
    "csflow": "Lite0 stage6 at 3 image scales (paper: EfficientNet-B5 at 768 px); 4 cross-scale "
              "blocks; map = mean over scales of per-position z^2/2",
    "fastflow": "Lite0 stage2/3/5 (paper: R18 layer1-3); 8 all-in-one steps, 3x3/1x1 "
                "alternating, hidden ratio 1; Adam 1e-3",
    "riad": "DRAEM's U-Net as inpainter (RIAD code unpublished); masks k=2/4/8/16 px, n=3; "
            "L2+MSGMS+SSIM",
    "cutpaste": "3-way; Lite0 pooled stage7 trained end to end (paper: R18); Ledoit-Wolf GDE; "
                "patch model + Gaussian receptive upsampling",
    "draem": "anomaly source: batch images + procedural textures (no DTD offline); SSIM with "
             "reflect padding; imgaug augmenters approximated",
    "draem_sspcab": "DRAEM with SSPCAB replacing the last reconstructive encoder block, "
                    "lambda 0.1",
    "patch_svdd": "64/32 px hierarchical encoder, maps multiplied; pairs sampled per step "
                  "(code: 100 per image and epoch)",
    "deep_svdd": "bias-free LeNet-style CNN widened to the image size; AE pretraining in init; "
                 "map = input gradient (not in the paper)",
    "fcdd": "frozen Lite0 stage3 + trainable conv head (paper: VGG11 part-frozen); confetti "
            "outlier exposure; no LCN",
    "ae": "Bergmann conv AE on whole images at the row's size (paper: 128 px patches), SSIM "
          "loss and 1-SSIM map by default, RGB, map smoothed sigma 4",
    "memae": "Bergmann conv AE with a 100-slot memory on its stride-16 map (paper: small "
             "MNIST/CIFAR nets), dot addressing, shrink 1/N (the paper's rule), entropy 2e-4",
    "vae": "Bergmann conv layout, distrax Gaussian posterior/likelihood (learned scale), map = "
           "reconstruction error at z = mu",
    "favae": "Lite0 stage2/3 features (paper: VGG); map = feature error + ELBO input "
             "gradient, each divided by its training mean",
    "anogan": "DCGAN; latent search with Adam lr 0.05 (paper: 500 plain steps), lambda 0.1",
    "f_anogan": "DCGAN-layout WGAN-GP (paper: residual nets) then izi_f encoder in one run "
                "(GAN for the first half of the steps), kappa 1",
    "ganomaly": "authors' DCGAN nets, weights 1/50/1; map = abs(x - x_hat) (paper: image-level "
                "only); no discriminator re-initialisation",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(ISSUE4_METHODS),
                        help="registered method names, or 'all' (default: the deep-feature "
                             "modeling methods)")
    parser.add_argument("--datasets", nargs="+", default=[*REAL_DATASETS, "synthetic"],
                        help="mvtec3d_tire, magnetic_tile, synthetic, synthetic/<category>")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size (default: the method's default_batch_size, else 16)")
    parser.add_argument("--seed", type=int, default=0)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None,
                        help="epochs for methods that train (default: the method's own)")
    budget.add_argument("--steps", type=int, default=None,
                        help="optimiser steps for methods that train (instead of --epochs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="METHOD:KEY=VALUE", help="hyper-parameter override, repeatable")
    parser.add_argument("--output", type=Path, default=REPO / "experiments" / "RESULTS.md")
    parser.add_argument("--json", type=Path, default=REPO / "experiments" / "results.json")
    parser.add_argument("--resume", action="store_true",
                        help="reuse rows of --json computed with the same settings")
    parser.add_argument("--compile-cache", type=Path, default=None, metavar="DIR",
                        help="share JAX's persistent compilation cache in DIR between the "
                             "rows: a row whose programs an earlier row compiled (e.g. the "
                             "next synthetic category) loads them instead; its seconds are "
                             "then marked as measured with a warm cache")
    parser.add_argument("--row", nargs=3, metavar=("METHOD", "DATASET", "ROOT"),
                        help=argparse.SUPPRESS)  # internal: run one row in this process
    parser.add_argument("--row-output", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def method_overrides(overrides: list[str], method: str) -> dict[str, str]:
    """``{key: value}`` of the ``METHOD:KEY=VALUE`` overrides that name ``method``."""
    out = {}
    for item in overrides:
        target, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not key:
            raise SystemExit(f"--set {item!r}: expected METHOD:KEY=VALUE")
        if target == method:
            out[key] = value
    return out


def expand_datasets(names: list[str]) -> list[str]:
    """Dataset row names, ``synthetic`` expanded to every synthetic category."""
    from anomjax.data import synthetic

    out = []
    for name in names:
        if name == "synthetic":
            out += [f"synthetic/{c}" for c in synthetic.CATEGORIES]
        elif name in REAL_DATASETS or (name.startswith("synthetic/") and
                                       name.split("/", 1)[1] in synthetic.CATEGORIES):
            out.append(name)
        else:
            raise SystemExit(f"unknown dataset {name!r}; use {', '.join(REAL_DATASETS)}, "
                             f"synthetic or synthetic/<{'|'.join(synthetic.CATEGORIES)}>")
    return out


def run_row(method_name: str, dataset: str, root: Path, args: argparse.Namespace) -> dict:
    """Fit and evaluate one method on one dataset in this process; returns the row."""
    import jax
    from tqdm.auto import tqdm

    from anomjax.data import open_dataset
    from anomjax.evaluate import evaluate, peak_rss_mb
    from anomjax.methods import make_method

    if args.compile_cache is not None:
        jax.config.update("jax_compilation_cache_dir", str(args.compile_cache))
    overrides = method_overrides(args.overrides, method_name)
    method = make_method(method_name, overrides)
    ds = open_dataset(root, image_size=args.image_size)
    key = jax.random.PRNGKey(args.seed)
    start = time.perf_counter()
    epochs = row_epochs(method, args)
    batch_size = row_batch_size(method, args)
    budget: dict[str, int | None] = {}
    if method.kind == "train":
        from anomjax.train import train_method, train_plan

        plan = train_plan(method, len(ds.train), batch_size, epochs=epochs, steps=args.steps)
        budget = {"steps": plan.optimizer_steps, "images_seen": plan.images_seen}
        state = train_method(method, key, ds.train, epochs=epochs, steps=args.steps,
                             batch_size=batch_size)
    else:
        batches = tqdm(ds.train.batches(batch_size), desc=f"fit {method_name}",
                       total=-(-len(ds.train) // batch_size), unit="batch")
        state = method.fit(key, batches)
    jax.block_until_ready(state)
    fit_seconds = time.perf_counter() - start
    result = evaluate(method, state, ds.test, batch_size=batch_size)
    return {
        "method": method_name, "dataset": dataset,
        "backbone": getattr(method, "backbone", "-"), "image_size": args.image_size,
        "epochs": epochs, **budget, "batch_size": batch_size, "overrides": overrides,
        "seed": args.seed,
        "n_train": len(ds.train), "n_test": result["n_test"],
        **{k: float(result[k]) for k in ("image_auroc", "image_ap", "image_f1max",
                                         "pixel_auroc", "pixel_ap", "pixel_aupro")},
        "fit_s": round(fit_seconds, 1), "test_s": round(float(result["test_seconds"]), 1),
        "peak_mb": peak_rss_mb(), "code": code_version(),
        **({"compile_cache": True} if args.compile_cache is not None else {}),
    }


def code_version() -> str:
    """The repository's commit (short hash), with ``+changes`` when tracked files other than
    this script's own outputs (results.json, RESULTS.md) are modified."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":!experiments/results.json", ":!experiments/RESULTS.md")
    return commit + ("+changes" if changed else "")


def row_epochs(method: Any, args: argparse.Namespace) -> int | None:
    """Training epochs of ``method``'s row: ``--epochs``, else its paper's; None if it fits
    or when the budget is ``--steps``."""
    if method.kind != "train" or args.steps is not None:
        return None
    epochs = args.epochs or getattr(method, "default_epochs", None)
    if epochs is None:
        raise SystemExit(f"{method.name} trains: pass --epochs")
    return epochs


def dataset_root(dataset: str, args: argparse.Namespace, synthetic_dir: Path | None) -> Path:
    if dataset.startswith("synthetic/"):
        assert synthetic_dir is not None
        return synthetic_dir / dataset.split("/", 1)[1]
    root = args.data_root / dataset
    if not root.is_dir():
        raise SystemExit(f"{root} not found: pass --data-root (the folder holding "
                         f"{', '.join(REAL_DATASETS)})")
    return root


def same_settings(row: dict, method: str, dataset: str, args: argparse.Namespace) -> bool:
    from anomjax.methods import make_method

    built = make_method(method, method_overrides(args.overrides, method))
    epochs = row_epochs(built, args)
    return (row.get("method") == method and row.get("dataset") == dataset
            and row.get("image_size") == args.image_size and row.get("seed") == args.seed
            and row.get("epochs") == epochs
            and (args.steps is None or row.get("steps") == args.steps)
            and row.get("batch_size", 16) == row_batch_size(built, args)
            and row.get("overrides") == method_overrides(args.overrides, method)
            and "error" not in row)


def row_batch_size(method: Any, args: argparse.Namespace) -> int:
    """``--batch-size``, else the method's paper batch size (``default_batch_size``), else 16."""
    if args.batch_size is not None:
        return args.batch_size
    return int(getattr(method, "default_batch_size", 16))


def spawn_row(method: str, dataset: str, root: Path, args: argparse.Namespace,
              argv: list[str]) -> dict:
    """Run one row in a fresh process; a failure becomes a row with its ``error``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv,
               "--row", method, dataset, str(root), "--row-output", str(out)]
        proc = subprocess.run(cmd, check=False)
        row = json.loads(out.read_text()) if out.exists() else {
            "error": f"the row's process exited with code {proc.returncode}"}
    if "error" in row:
        row = {"method": method, "dataset": dataset, "image_size": args.image_size,
               "seed": args.seed, "overrides": method_overrides(args.overrides, method), **row}
    return row


def is_sspcab(row: dict) -> bool:
    """A DRAEM + SSPCAB row (``--set draem:sspcab=true``), kept apart from plain DRAEM's."""
    return row["method"] == "draem" and str(row.get("overrides", {}).get("sspcab", "")
                                            ).lower() in {"true", "1", "yes"}


def row_key(row: dict) -> tuple:
    """What a new row replaces: the row of the same method (DRAEM + SSPCAB apart) and dataset."""
    return (row["method"], row["dataset"], is_sspcab(row))


def row_order(row: dict, methods: list[str]) -> tuple:
    """Real datasets first, then synthetic categories; methods in the issue's order."""
    dataset = row["dataset"]
    known = [*REAL_DATASETS]
    order = known.index(dataset) if dataset in known else len(known)
    names = [*ISSUE4_METHODS, *ISSUE5_METHODS, *FLOW_METHODS, *ISSUE13_METHODS, *methods]
    method = names.index(row["method"]) if row["method"] in names else len(names)
    return (order, dataset, method, row["method"], is_sspcab(row))


def row_steps(row: dict) -> str:
    """``"steps (epochs)"`` of a trained row: its recorded optimiser steps, or for rows
    measured before steps were recorded the steps the engine's plan gives for its training
    split, batch size and epochs on one device (``train_plan``); ``-`` for fitted methods."""
    steps = row.get("steps")
    if steps is None and row.get("epochs") and row.get("n_train"):
        from anomjax.train import train_plan

        steps = train_plan(None, row["n_train"], row.get("batch_size", 16),
                           epochs=row["epochs"]).optimizer_steps
    if steps is None:
        return "-"
    return f"{steps} ({row['epochs']} ep)" if row.get("epochs") else str(steps)


def fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def notes(row: dict) -> str:
    parts = [NOTES.get("draem_sspcab" if is_sspcab(row) else row["method"], "")]
    if row.get("batch_size", 16) != 16:
        parts.append(f"batch {row['batch_size']}")
    if row.get("code"):
        parts.append(f"code {row['code']}")
    if row.get("compile_cache"):
        parts.append("seconds with a shared compilation cache")
    if row.get("overrides"):
        parts.append("set " + ", ".join(f"{k}={v}" for k, v in row["overrides"].items()))
    if row.get("error"):
        parts.append(f"FAILED: {row['error']}")
    return "; ".join(p for p in parts if p)


def write_markdown(rows: list[dict], path: Path, command: str) -> None:
    """``RESULTS.md``: how it was made, then one table row per (method, dataset)."""
    import jax

    commands = list(dict.fromkeys([r.get("command", command) for r in rows]))
    header = ["method", "dataset/category", "backbone", "image size", "optimiser steps",
              "image AUROC",
              "pixel AUROC", "AUPRO", "fit s", "test s", "peak memory MB", "notes"]
    lines = [
        "# Results",
        "",
        "One command regenerates every row: `python experiments/results.py` (add "
        "`--set METHOD:KEY=VALUE` to change a hyper-parameter; `--resume` keeps stored rows "
        "with the same settings). The rows below were produced by:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Each row's non-default settings are in its notes, with the commit it was measured "
        "with (`code`); rows without one were measured before commits were recorded (the "
        "code before commit 379acff).",
        "",
        f"Table written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; measured on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared "
        f"with other work while measured), jax {jax.__version__}, backend "
        f"{jax.default_backend()}. Metrics are fractions in [0, 1] (AUPRO integrated to FPR "
        "0.3). fit s: image loading, feature extraction, jit compilation and the fit itself; "
        "test s: loading, compilation and scoring of the test split; peak memory: maximum "
        "resident memory of the row's own process (JAX runtime and backbone included). "
        "Real data: `../shared/data`; synthetic: `anomjax.data.synthetic` categories "
        "(40 train, 8 good + 16 defective test images) written at the image size. optimiser "
        "steps: the updates of the methods that learn weights, with the epochs they made "
        "(batch size in the notes when it is not 16; incomplete last batches are dropped); "
        "'-' for methods that only fit statistics. Rows of a few dozen steps are short "
        "runs, not the methods' trained accuracy: the learning curves of "
        "`experiments/learning_curves.md` (1,000 steps, with the trivial baselines and the "
        "step-0 model) say whether a method learns. Floor: on mvtec3d_tire the pixels' "
        "brightness alone reaches a pixel AUROC of 0.85-0.91 "
        "(`experiments/baseline_intensity.md`). Where a frozen network "
        "runs in front of what is trained, its features are computed once per training "
        "image (`anomjax.train.frozen_cache`) from code e681cf6 on for STPM, c9b40c8 for "
        "Reverse Distillation and MKD, 68a16f9 for CFLOW, FastFlow and CS-Flow, edd2697 for "
        "DFR: fit seconds of later rows are lower; metrics change only by float rounding. "
        "The parity work (commit 64f57dd, `experiments/PARITY.md`) changed the defaults of "
        "CFLOW-AD (fibre mini-batches, batch 32), FastFlow (batch 32), DifferNet (batch 24), "
        "CS-Flow (map of the finest scale), Reverse Distillation and DFR (aligned-corner "
        "upsampling), MKD (per-image map normalisation, cloner ReLUs), Uninformed Students "
        "(centred patches), MemAE (shrink 1/N), f-AnoGAN (the authors' encoder training), "
        "GANomaly (discriminator re-initialisation), Patch SVDD (mean image, 25 updates per "
        "step), FCDD (darkening confetti, weight decay 1e-4, batch 128), DRAEM (the authors' "
        "synthesis, SSIM padding, scaled score filter) and RIAD (BatchNorm per pass): their "
        "rows with an older `code` were measured with the earlier defaults.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        metric = [fmt(row.get(k, "-")) for k in ("image_auroc", "pixel_auroc", "pixel_aupro")]
        cells = [row["method"], row["dataset"], row.get("backbone", "-"),
                 str(row.get("image_size", "-")), row_steps(row), *metric,
                 fmt(row.get("fit_s", "-"), 1), fmt(row.get("test_s", "-"), 1),
                 fmt(row.get("peak_mb", "-"), 0), notes(row)]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.row:
        method, dataset, root = args.row
        try:
            row = run_row(method, dataset, Path(root), args)
        except Exception as error:
            args.row_output.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
            raise
        args.row_output.write_text(json.dumps(row))
        return
    from anomjax.data import synthetic
    from anomjax.methods import method_names

    methods = method_names() if args.methods == ["all"] else args.methods
    unknown = sorted(set(methods) - set(method_names()))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; registered: {', '.join(method_names())}")
    datasets = expand_datasets(args.datasets)
    stored = json.loads(args.json.read_text()) if args.json.exists() else []
    child_argv = [a for a in argv if a != "--resume"]
    command = " ".join(["python experiments/results.py", *child_argv])
    with tempfile.TemporaryDirectory(prefix="anomjax_synthetic_") as tmp:
        categories = [d.split("/", 1)[1] for d in datasets if d.startswith("synthetic/")]
        if categories:
            synthetic.write_mvtec(tmp, categories, image_size=args.image_size, seed=args.seed)
        for dataset in datasets:
            root = dataset_root(dataset, args, Path(tmp))
            for method in methods:
                reused = [r for r in stored if same_settings(r, method, dataset, args)]
                if args.resume and reused:
                    row = reused[-1]
                else:
                    row = {**spawn_row(method, dataset, root, args, child_argv),
                           "command": command}
                print(json.dumps(row), flush=True)
                # Re-read the file: another results.py run may have added rows meanwhile.
                stored = json.loads(args.json.read_text()) if args.json.exists() else []
                stored = [r for r in stored if row_key(r) != row_key(row)] + [row]
                stored.sort(key=lambda r: row_order(r, methods))
                args.json.write_text(json.dumps(stored, indent=1) + "\n")
                write_markdown(stored, args.output, command)
    print(f"wrote {args.output} and {args.json}")


if __name__ == "__main__":
    main()
