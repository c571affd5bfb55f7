"""The multi-class (unified) setting against one model per category, for PatchCore and STPM.

    python experiments/multiclass.py [--image-size 128] [--epochs 3] [--out DIR]

For each method and each group of categories (the two real datasets of ``../shared/data``,
and the synthetic categories), it trains one model per category ("separate") and one model
on the union of the group's training images ("unified"), tests each category with the
shared metrics, and writes ``experiments/multiclass.md``: one row per (method, setting,
category) and the mean of each group. Both settings use the same config (image size,
epochs, batch size, seed), through :func:`anomjax.experiment.run_experiment`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from anomjax.data.synthetic import CATEGORIES, write_mvtec
from anomjax.experiment import base_config, run_experiment
from anomjax.experiment.report import mean_std

REPO = Path(__file__).resolve().parents[1]
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["patchcore", "stpm"])
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--output", type=Path, default=REPO / "experiments" / "multiclass.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.out or Path(tmp) / "runs"
        synthetic = write_mvtec(Path(tmp) / "synthetic", CATEGORIES,
                                image_size=args.image_size, disable=True)
        groups = {"real": [args.data_root / "mvtec3d_tire", args.data_root / "magnetic_tile"],
                  "synthetic": synthetic}
        rows = []
        for method in args.methods:
            fields = {"image_size": args.image_size, "crop": None, "epochs": args.epochs,
                      "batch_size": 16}
            if method == "patchcore":
                fields["method.coreset_ratio"] = 0.01
            for group, folders in groups.items():
                unified = base_config(method, data=tuple(map(str, folders)), **fields)
                for r in run_experiment(unified, runs / method / group / "unified"):
                    rows.append({"setting": "unified", "group": group, **r})
                for folder in folders:
                    separate = base_config(method, data=str(folder), **fields)
                    for r in run_experiment(separate, runs / method / group / folder.name):
                        rows.append({"setting": "separate", "group": group, **r})
                        print(rows[-1], flush=True)
        write_table(rows, args)


def write_table(rows: list[dict], args: argparse.Namespace) -> None:
    lines = ["# Multi-class (unified) against one model per category", "",
             f"`python experiments/multiclass.py --image-size {args.image_size} --epochs "
             f"{args.epochs}`: Lite0 backbone, batch 16, seed 0; PatchCore with coreset ratio "
             "0.01; epochs apply to STPM only. *unified*: one model trained on the union of "
             "the group's training images; *separate*: one model per category.", "",
             "| method | setting | category | image AUROC | pixel AUROC | AUPRO | fit s |",
             "|---|---|---|---|---|---|---|"]
    for method in args.methods:
        for group in ("real", "synthetic"):
            for setting in ("separate", "unified"):
                sel = [r for r in rows if (r["method"], r["group"], r["setting"])
                       == (method, group, setting)]
                for r in sel:
                    lines.append(f"| {method} | {setting} | {r['category']} | "
                                 + " | ".join(f"{r[k]:.3f}" for k in METRICS)
                                 + f" | {r['fit_seconds']:.1f} |")
                means = [mean_std([r[k] for r in sel])[0] for k in METRICS]
                lines.append(f"| **{method}** | **{setting}** | **{group} mean** | "
                             + " | ".join(f"**{m:.3f}**" for m in means) + " | |")
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
