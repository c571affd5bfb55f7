"""Latency of exported scorers (``anomjax export``) against the checkpoint, same images.

    python experiments/bench_export.py [--image-size 256]
        [--methods patchcore padim stpm fastflow draem] [--out /tmp/bench_export]

For each method: fit it (a trained method for one optimiser step: latency does not depend on
the weights) on a synthetic category at ``--image-size``, export it, then measure on the same
16 test images, the fit and each measurement in its own child process (so each
peak memory, the maximum resident set in MiB, is its own):

* ``exported``: :meth:`anomjax.deploy.Scorer.score` on images already in memory;
* ``checkpoint``: ``jax.jit(method.score)`` on the same images (what ``predict`` runs);
* ``predict artefact`` / ``predict run``: ``anomjax predict`` end to end (decode, resize,
  score, write heat maps and ``scores.csv``) on the artefact and on the run folder.

Images per second at batch 1 and 16 exclude the first call (compilation), which is reported
as ``first call s``. Prints a Markdown table and writes it to ``OUT/bench_export.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``experiments`` is a folder of scripts, not a package
    sys.path.insert(0, str(REPO))

from experiments.bench_timing import peak_rss_mib, time_batches  # noqa: E402
from experiments.results import method_overrides  # noqa: E402

KINDS = ("exported", "checkpoint", "predict artefact", "predict run")
ANOMALIB = "anomalib inferencer"
HELPER = Path(__file__).with_name("bench_anomalib_inferencer.py")


def measure(kind: str, run: Path, artefact: Path, images_dir: Path, batch: int,
            out: Path) -> dict:
    """One measurement (in this process): images per second after the first call."""
    from anomjax import deploy, runs
    from anomjax.data import read_image

    files = sorted(str(p) for p in images_dir.glob("*.png"))
    if kind in ("exported", "checkpoint"):
        images = np.stack([read_image(f) for f in files])
        if kind == "exported":
            scorer = deploy.load(artefact)
            call = lambda x: scorer.score(x).maps  # noqa: E731
        else:
            import jax

            from anomjax.run_folder import load_run

            method, state, _ = load_run(run)
            score_fn = jax.jit(method.score)
            call = lambda x: np.asarray(score_fn(state, x.astype(np.float32) / 255.0).maps)  # noqa: E731
        images_per_second, first = time_batches(call, images, batch)
    else:
        folder = artefact if kind == "predict artefact" else run
        start = time.perf_counter()
        runs.predict(folder, files[:batch], out / "warm", batch_size=batch, threshold=1.0,
                     progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        runs.predict(folder, files, out / "pred", batch_size=batch, threshold=1.0,
                     progress=False)
        images_per_second = len(files) / (time.perf_counter() - start)
    return {"images_per_second": images_per_second, "first_call_s": first,
            "peak_rss_mib": peak_rss_mib()}


def write_data(size: int, root: Path) -> None:
    """The synthetic category ``root/dataSIZE/wood`` and a flat copy of its 16 test images,
    ``root/imagesSIZE``, unless they exist."""
    from anomjax.data.synthetic import write_mvtec

    data, images = root / f"data{size}", root / f"images{size}"
    if not data.exists():
        write_mvtec(data, categories=("wood",), n_train=16, n_test_good=8,
                    n_test_defect=8, image_size=size, seed=0, disable=True)
    if not images.exists():
        images.mkdir()
        for i, f in enumerate(sorted((data / "wood" / "test").rglob("*.png"))):
            (images / f"{i:03d}.png").write_bytes(f.read_bytes())


def prepare(method_name: str, overrides: dict[str, str], size: int, fit_batch: int,
            root: Path) -> list[str]:
    """Fit ``method_name`` on a synthetic category and export it: ``[run, artefact, test
    images folder, backbone]``."""
    from anomjax import runs
    from anomjax.methods import make_method

    data = root / f"data{size}"
    method = make_method(method_name, overrides)
    folder = root / label(method_name, overrides).replace(" ", "_")
    run, artefact = folder / "run", folder / "artefact"
    runs.fit(method, data / "wood", run, image_size=size, batch_size=fit_batch, overwrite=True,
             progress=False, **({"steps": 1} if method.kind == "train" else {}))
    runs.export(run, artefact, threshold=1.0, overwrite=artefact.exists())
    images = root / f"images{size}"
    backbone = getattr(method, "backbone", None) or "none ({})".format(", ".join(
        f"{k} {v}" for k, v in vars(method).items() if k.endswith("width")))
    return [str(run), str(artefact), str(images), backbone]


def child(args: list[str], python: str = sys.executable) -> dict | list:
    """Run ``python args`` and parse the JSON on its last line of output."""
    proc = subprocess.run([python, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(lines[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def label(name: str, overrides: dict[str, str]) -> str:
    """The method's row name: its name and any ``--set`` overrides."""
    return " ".join([name, *(f"{k}={v}" for k, v in sorted(overrides.items()))])


def measure_method(name: str, overrides: dict[str, str], args: argparse.Namespace,
                   rows: dict[str, dict]) -> None:
    """Measure every requested scorer of one method back to back into ``rows``."""
    out, size, row_name = Path(args.out), args.image_size, label(name, overrides)
    sets = [f"--set={name}:{k}={v}" for k, v in overrides.items()]
    ours = [k for k in args.scorers if k in KINDS]
    if ours:
        run, artefact, images, backbone = child(
            [__file__, "--out", str(out), "--image-size", str(size), "--fit-batch-size",
             str(args.fit_batch_size), "--prepare", name, *sets])
        jobs = [(kind, [__file__, "--out", str(out), "--worker", kind, run, artefact, images])
                for kind in ours]
    else:
        jobs = []
    python = None
    if ANOMALIB in args.scorers and not overrides:  # anomalib has no width settings
        python = args.anomalib_python
        peer = child([str(HELPER), "prepare", name, str(out / f"data{size}" / "wood"), str(size),
                      str(out / "anomalib" / name)], python)
        jobs.append((ANOMALIB, [str(HELPER), "measure", peer["model"],
                                str(out / f"images{size}")]))
    for batch in (1, 16):
        for kind, command in jobs:
            record = {"method": row_name, "scorer": kind, "batch": batch,
                      "backbone": peer["backbone"] if kind == ANOMALIB else backbone}
            try:
                record |= child([*command, str(batch)],
                                python if kind == ANOMALIB else sys.executable)
            except RuntimeError as error:
                record["error"] = str(error)
            rows[f"{row_name}|{kind}|{batch}"] = record
            print(table_line(record, rows), flush=True)


def table_line(r: dict, rows: dict[str, dict]) -> str:
    """One Markdown row; the exported rows carry the two ratios."""
    if "error" in r:
        return f"| {r['method']} | {r['backbone']} | {r['scorer']} | {r['batch']} | " \
               f"failed: {r['error']} | | | | |"
    ratios = []
    if r["scorer"] == "exported":
        base = r["method"].split()[0]
        for other in (rows.get(f"{base}|{ANOMALIB}|{r['batch']}"),
                      rows.get(f"{r['method']}|checkpoint|{r['batch']}")):
            ok = other is not None and "error" not in other
            ratios.append(f"{r['images_per_second'] / other['images_per_second']:.2f}"
                          if ok else "n/a")
    else:
        ratios = ["", ""]
    return (f"| {r['method']} | {r['backbone']} | {r['scorer']} | {r['batch']} | "
            f"{r['images_per_second']:.2f} | {r['first_call_s']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {ratios[0]} | {ratios[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--methods", nargs="+",
                        default=["patchcore", "padim", "stpm", "fastflow", "draem"])
    parser.add_argument("--scorers", nargs="+", default=[*KINDS, ANOMALIB],
                        choices=[*KINDS, ANOMALIB], metavar="SCORER",
                        help=f"subset of: {', '.join(repr(k) for k in (*KINDS, ANOMALIB))}")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="METHOD:KEY=VALUE", help="hyper-parameter override, repeatable")
    parser.add_argument("--fit-batch-size", type=int, default=8,
                        help="batch of the fit (not of the measurements)")
    parser.add_argument("--anomalib-python", default="/tmp/venv-ref/bin/python",
                        help="interpreter with torch and anomalib 2.7 (never the project's)")
    parser.add_argument("--out", default="/tmp/bench_export")
    parser.add_argument("--worker", nargs=5, metavar=("KIND", "RUN", "ART", "IMAGES", "B"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.prepare:  # in a child, so that the measurements' peak memory is not the fit's
        overrides = method_overrides(args.overrides, args.prepare)
        print(json.dumps(prepare(args.prepare, overrides, args.image_size, args.fit_batch_size,
                                 out)))
        return
    if args.worker:
        kind, run, artefact, images, batch = args.worker
        print(json.dumps(measure(kind, Path(run), Path(artefact), Path(images), int(batch),
                                 out / "work" / kind.replace(" ", "_"))))
        return
    out.mkdir(parents=True, exist_ok=True)
    store = out / "rows.json"  # rows of earlier invocations on this folder are kept
    rows: dict[str, dict] = json.loads(store.read_text()) if store.exists() else {}
    write_data(args.image_size, out)
    import jax

    header = [f"{args.image_size} px, 16 synthetic test images, {jax.devices()[0].platform} "
              f"({jax.device_count()} device), jax {jax.__version__}; anomalib with "
              f"{args.anomalib_python}", "",
              "| method | backbone | scorer | batch | images/s | first call s | peak RSS MiB | "
              "exported / anomalib | exported / checkpoint |",
              "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(header), flush=True)
    for name in args.methods:
        measure_method(name, method_overrides(args.overrides, name), args, rows)
        store.write_text(json.dumps(rows, indent=1))
    order = {k: i for i, k in enumerate((*KINDS, ANOMALIB))}
    table = [table_line(r, rows) for r in sorted(
        rows.values(), key=lambda r: (r["method"], r["batch"], order[r["scorer"]]))]
    (out / "bench_export.md").write_text("\n".join(header + table) + "\n")
    print("\n".join(["", "All rows in this folder:", *header[2:], *table]))


if __name__ == "__main__":
    main()
