"""The run API: fit, test and predict with run folders, as plain library functions.

Every face of anomjax goes through these functions: the ``anomjax fit | test | predict |
demo`` commands (which only parse arguments and print), the experiment layer (``run``,
``sweep``, ``benchmark``) and a notebook::

    from anomjax import runs
    from anomjax.methods import make_method

    fitted = runs.fit(make_method("patchcore"), ["data/bottle"], "runs/bottle", image_size=256)
    tested = runs.test("runs/bottle", "data/bottle", maps_dir="out")   # metrics, threshold
    rows = runs.predict("runs/bottle", ["new_images/"], "predictions")  # heat maps, scores.csv

A run folder (:mod:`anomjax.run_folder`) holds one run. ``fit`` refuses a non-empty folder
unless asked to replace it whole (``overwrite``) or to continue its training (``resume``);
the folder is locked while ``fit`` or ``test`` uses it, and every file is written
atomically. Errors a user can cause are :class:`UsageError`, :class:`RunError`,
:class:`~anomjax.data.DataError` or ``ValueError`` with one line that names the input; the
command line prints exactly these messages.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from anomjax import deploy
from anomjax.data import expand_image_paths, iter_image_batches, open_dataset, read_image
from anomjax.data.multiclass import open_multiclass
from anomjax.data.transforms import RESIZE_DTYPES, as_hw, to_float
from anomjax.deploy import MANIFEST_FILE, PROGRAM_FILE, STATE_FILE, is_artefact
from anomjax.evaluate import evaluate, peak_rss_mb
from anomjax.export import input_size, write_artefact
from anomjax.run_folder import (
    CONFIG_FILE,
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
from anomjax.tiling import score_tiled
from anomjax.train import EngineSettings, train_method, train_plan
from anomjax.types import Scores, State
from anomjax.visualize import save_heatmap

METRIC_KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
               "pixel_aupro")
#: Largest image side (``image_size`` / ``crop``): 4096 px already needs ~200 MB per RGB image.
MAX_IMAGE_SIDE = 4096
#: The batch size of a method whose paper gives none.
DEFAULT_BATCH_SIZE = 16


class UsageError(ValueError):
    """Arguments that contradict each other or do not apply to the method."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did.

    Attributes:
      run_dir: the absolute run folder.
      method: the fitted method.
      state: its fitted or trained state (a pytree).
      seconds: wall time of fitting or training.
      config: the run settings written to ``config.json`` besides the method's.
    """

    run_dir: Path
    method: Any
    state: State
    seconds: float
    config: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TestResult:
    """What :func:`test` measured.

    Attributes:
      record: the flat metrics record (:data:`METRIC_KEYS`, method, timings, ...).
      per_defect: ``{defect type: metrics}`` on good + that type.
      threshold: the threshold record written to ``threshold.json``, or ``None`` when the
        split cannot fix one (``threshold_note`` says why).
      threshold_note: how the threshold was chosen, or why none was.
      warnings: what the caller should tell the user (e.g. a category the run was not
        fitted on).
    """

    __test__ = False  # not a pytest test class

    record: dict[str, Any]
    per_defect: dict[str, dict[str, float]]
    threshold: dict[str, Any] | None
    threshold_note: str
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- fit


def fit(method: Any, data: Sequence[str | os.PathLike] | str | os.PathLike,
        out: str | os.PathLike, *, layout: str | None = None, image_size: int = 256,
        crop: int | None = None, resize_dtype: str = "uint8", seed: int = 0,
        batch_size: int | None = None, epochs: int | None = None, steps: int | None = None,
        resume: bool = False, overwrite: bool = False, allow_config_change: bool = False,
        engine: EngineSettings | None = None, progress: bool = True) -> FitResult:
    """Fit (``kind == "fit"``) or train ``method`` on the normal images of ``data`` (one
    category folder, or several: one model on their union) into the run folder ``out``.

    ``batch_size`` defaults to the method's paper batch size (else 16); the training budget
    is ``steps`` optimiser steps or ``epochs`` passes (neither: the paper's epochs), and
    ``config.json`` records the steps taken and the images seen. ``resume`` continues the
    training checkpoints in ``out`` (the same settings are required unless
    ``allow_config_change``), ``overwrite`` replaces the run in ``out`` whole. Under
    ``jax.distributed`` every process calls it alike; process 0 writes. ``engine``: how the
    engine trains (precision, logging, checkpoints, accumulation, profiler), recorded in
    ``config.json``.
    """
    if allow_config_change and not resume:
        raise UsageError("--allow-config-change applies only with --resume")
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: pick one")
    check_training_arguments(method, epochs=epochs, steps=steps, resume=resume, engine=engine)
    folders = [data] if isinstance(data, str | os.PathLike) else list(data)
    batch_size = batch_size or method.default_batch_size or DEFAULT_BATCH_SIZE
    dataset, _ = open_multiclass(folders, layout=layout, image_size=image_size, crop=crop,
                                 resize_dtype=resize_dtype)
    with open_run_folder(out, resume=resume, overwrite=overwrite):
        trained = train_or_fit(method, dataset.train, seed=seed, batch_size=batch_size,
                               run_dir=Path(out), epochs=epochs, steps=steps, resume=resume,
                               allow_config_change=allow_config_change, engine=engine,
                               progress=progress)
        resolved = [str(Path(d).resolve()) for d in folders]
        config = {"data": resolved[0] if len(resolved) == 1 else resolved,
                  "layout": dataset.layout, "image_size": image_size, "crop": crop,
                  "resize_dtype": resize_dtype, "seed": seed, "batch_size": batch_size,
                  "n_train": len(dataset.train), **trained.budget,
                  "fit_seconds": round(trained.seconds, 3), "fit_peak_rss_mb": peak_rss_mb()}
        run_dir = save_run(out, method, trained.state, config)
    return FitResult(run_dir=run_dir, method=method, state=trained.state,
                     seconds=trained.seconds, config=config)


@contextlib.contextmanager
def open_run_folder(out: str | os.PathLike, *, resume: bool = False,
                    overwrite: bool = False, lock: bool = True) -> Iterator[Path]:
    """Lock the run folder ``out`` and prepare it for a new fit (see
    :func:`~anomjax.run_folder.prepare_run_dir`); yields its absolute path.

    Only process 0 locks and prepares; the others wait for it (``jax.distributed``).
    ``lock=False``: the caller holds the lock already.
    """
    out = Path(out)
    primary = jax.process_index() == 0
    if primary:
        check_writable_dir(out, "--out")
    with run_lock(out) if primary and lock else contextlib.nullcontext():
        if primary:
            prepare_run_dir(out, resume=resume, overwrite=overwrite)
        if jax.process_count() > 1:  # nobody writes before process 0 has prepared it
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("anomjax: run folder ready")
        yield out.absolute()


@dataclasses.dataclass(frozen=True)
class Trained:
    """The state :func:`train_or_fit` produced, its wall time and its budget.

    Attributes:
      state: the fitted or trained state.
      seconds: wall time.
      budget: ``optimizer_steps`` (0 for a fitted method), ``epochs`` and ``images_seen``
        (training images the optimiser saw; one pass for a fitted method).
    """

    state: State
    seconds: float
    budget: dict[str, int]


def train_or_fit(method: Any, train_split: Any, *, seed: int, batch_size: int,
                 run_dir: str | os.PathLike | None, epochs: int | None = None,
                 steps: int | None = None, resume: bool = False,
                 allow_config_change: bool = False, engine: EngineSettings | None = None,
                 progress: bool = True) -> Trained:
    """Fit (one pass) or train (``method.kind == "train"``, with checkpoints in ``run_dir``,
    for ``steps`` optimiser steps or ``epochs`` passes) ``method`` on ``train_split``."""
    check_training_arguments(method, epochs=epochs, steps=steps, resume=resume, engine=engine)
    key = jax.random.key(seed)
    start = time.perf_counter()
    engine = engine or EngineSettings()
    if method.kind == "train":
        plan = train_plan(method, len(train_split), batch_size, epochs=epochs, steps=steps,
                          accumulate=engine.accumulate)
        state = train_method(method, key, train_split, epochs=epochs, steps=steps,
                             batch_size=batch_size, run_dir=run_dir, resume=resume,
                             allow_config_change=allow_config_change, disable=not progress,
                             **engine.train_kwargs())
        budget = {"optimizer_steps": plan.optimizer_steps, "epochs": plan.epochs,
                  "images_seen": plan.images_seen, "engine": engine.train_kwargs()}
    else:
        with caller_mesh(method), tqdm(
                train_split.batches(batch_size), desc=f"fitting {method.name}", unit="batch",
                total=-(-len(train_split) // batch_size),
                disable=not progress or jax.process_index() != 0) as batches:
            state = method.fit(key, batches)
            jax.block_until_ready(state)
        budget = {"optimizer_steps": 0, "epochs": 1, "images_seen": len(train_split)}
    return Trained(state=state, seconds=time.perf_counter() - start, budget=budget)


def check_training_arguments(method: Any, *, epochs: int | None = None,
                             steps: int | None = None, resume: bool = False,
                             engine: EngineSettings | None = None) -> None:
    """Refuse training arguments for a method fitted in one pass (before any work)."""
    if method.kind == "train":
        return
    if epochs is not None or steps is not None or resume:
        raise UsageError(f"{method.name} is fitted in one pass: --epochs/--steps/--resume do "
                         "not apply")
    if engine is not None and engine != EngineSettings():
        raise UsageError(f"{method.name} is fitted in one pass: the training engine's "
                         "settings (--accumulate, --compute-dtype, ...) do not apply")


def caller_mesh(method: Any) -> contextlib.AbstractContextManager:
    """The mesh of all devices (``jax.set_mesh``) for a method that declares
    ``uses_caller_mesh`` and when there are several devices; else no mesh."""
    if not method.uses_caller_mesh or jax.device_count() == 1:
        return contextlib.nullcontext()
    return jax.set_mesh(jax.make_mesh((jax.device_count(),), ("devices",)))


# ---------------------------------------------------------------------------- test


def test(run_dir: str | os.PathLike, data: str | os.PathLike, *, layout: str | None = None,
         batch_size: int = DEFAULT_BATCH_SIZE, json_path: str | os.PathLike | None = None,
         maps_dir: str | os.PathLike | None = None,
         overlays_dir: str | os.PathLike | None = None,
         threshold_quantile: float | None = None, tile_size: int | None = None,
         tile_stride: int | None = None, progress: bool = True) -> TestResult:
    """Evaluate the run in ``run_dir`` on the test split of the category folder ``data``.

    Writes the image threshold to ``run_dir/threshold.json`` (F1-optimal, or the
    ``threshold_quantile`` of the good images' scores; it records the run's ``run_id`` and
    the category it was chosen on), the metrics record to ``json_path``,
    ``maps.npz`` to ``maps_dir`` and overlay PNGs to ``overlays_dir`` where given. Output
    paths and the run's files are checked before any work. With ``tile_size`` the test images
    are read at their own size and scored by tiles (as :func:`predict` does), ``batch_size``
    tiles at a time, and the metrics are computed at that size.
    """
    if json_path:
        check_writable_file(json_path, "--json")
    for flag, folder in (("--maps", maps_dir), ("--overlays", overlays_dir)):
        if folder:
            check_writable_dir(folder, flag)
    config = load_method(run_dir)[1]
    check_image_settings(run_dir, config)
    tiles = tile_settings(input_size(config), tile_size, tile_stride)
    with run_lock(run_dir):
        method, state, config = load_run(run_dir)
        dataset = open_dataset(data, layout=layout,
                               image_size=None if tiles else config["image_size"],
                               crop=None if tiles else config.get("crop"),
                               resize_dtype=run_resize_dtype(config))
        score_fn = None if tiles is None else tiled_score_fn(method, tiles, batch_size)
        with caller_mesh(method):
            result = evaluate(method, state, dataset.test, batch_size=batch_size,
                              maps_dir=maps_dir, overlays_dir=overlays_dir,
                              threshold_quantile=threshold_quantile, progress=progress,
                              score_fn=score_fn)
        notes = stamp_threshold(result["threshold"], config, data)
        if result["threshold"] is not None:
            write_json(Path(run_dir) / THRESHOLD_FILE, result["threshold"])
    record = metrics_record(method, config, result)
    if json_path:
        write_json(Path(json_path), {**record, "per_defect": result["per_defect"]})
    return TestResult(record=record, per_defect=result["per_defect"],
                      threshold=result["threshold"], threshold_note=result["threshold_note"],
                      warnings=tuple(notes))


def stamp_threshold(threshold: dict[str, Any] | None, config: dict[str, Any],
                    data: str | os.PathLike) -> list[str]:
    """Tie a threshold record (in place) to its run (``run_id``) and to the category folder
    ``data`` it was chosen on; returns a warning when the run was not fitted on ``data``."""
    fitted_on = config.get("data")
    fitted_on = [fitted_on] if isinstance(fitted_on, str) else list(fitted_on or [])
    tested_on = str(Path(data).resolve())
    if threshold is not None:
        threshold.update(run_id=config.get("run_id"), data=tested_on,
                         category=Path(tested_on).name, fitted_category=tested_on in fitted_on)
    if fitted_on and tested_on not in fitted_on:
        return [f"{tested_on} is not a category the run was fitted on ({', '.join(fitted_on)})"
                + (": its threshold was chosen on unseen data" if threshold else "")]
    return []


def metrics_record(method: Any, config: dict[str, Any], result: dict[str, Any]) -> dict:
    """The flat metrics record of one test (the keys of ``anomjax test --json``)."""
    record = {k: result[k] for k in METRIC_KEYS}
    record.update(method=method.name, backbone=getattr(method, "backbone", None),
                  image_size=config["image_size"], n_train=config["n_train"],
                  optimizer_steps=config.get("optimizer_steps"),
                  images_seen=config.get("images_seen"),
                  n_test=result["n_test"], fit_seconds=config["fit_seconds"],
                  test_seconds=result["test_seconds"],
                  images_per_second=result["images_per_second"],
                  peak_rss_mb=max(result["peak_rss_mb"], config.get("fit_peak_rss_mb", 0.0)))
    return record


# ---------------------------------------------------------------------------- predict


def predict(run_dir: str | os.PathLike, paths: Sequence[str | os.PathLike],
            out: str | os.PathLike, *, threshold: float | None = None,
            batch_size: int = DEFAULT_BATCH_SIZE, tile_size: int | None = None,
            tile_stride: int | None = None, progress: bool = True
            ) -> list[dict[str, Any]]:
    """Score image files (or the images of folders) ``paths`` with the run in ``run_dir``,
    or with the exported scorer in ``run_dir`` (a folder written by :func:`export`: scored
    by :mod:`anomjax.deploy` alone, without the method's code).

    Writes ``out/<i>_<stem>_heatmap.png``, ``out/<i>_<stem>_map.npy`` ``[H, W]`` and
    ``out/scores.csv`` (path, raw score, normalised score, label, heat map), and returns the
    rows of ``scores.csv``. ``threshold`` overrides the one ``test`` chose; without either
    the call is refused before any work. With ``tile_size`` (the run's input side) the
    images are not resized but scored by overlapping tiles ``tile_stride`` apart (default:
    ``tile_size``), ``batch_size`` tiles at a time, and the maps are the blended tile maps
    at the image's own size (:mod:`anomjax.tiling`).
    """
    artefact = is_artefact(run_dir)
    if artefact:
        scorer = deploy.load(run_dir, threshold)
        limits, size, name = scorer.threshold, scorer.input_size, scorer.method
    else:
        config = load_method(run_dir)[1]
        check_image_settings(run_dir, config)
        limits = predict_threshold(run_dir, threshold)
        size, name = input_size(config), config["method"]
    tiles = tile_settings(size, tile_size, tile_stride)
    files = expand_image_paths(paths)
    _check_utf8_names(files)
    out = Path(out)
    check_writable_dir(out, "--out")
    if artefact:
        scored = _artefact_maps(scorer, files, batch_size, tiles)
        rows = _write_predictions(out, scored, limits, len(files), name, progress)
    else:
        method, state, config = load_run(run_dir)
        with caller_mesh(method):
            scored = _checkpoint_maps(method, state, config, files, batch_size, tiles)
            rows = _write_predictions(out, scored, limits, len(files), name, progress)
    with atomic_writer(out / "scores.csv", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def tile_settings(size: tuple[int, int], tile_size: int | None, tile_stride: int | None
                  ) -> tuple[tuple[int, int], int] | None:
    """``(tile (h, w), stride)`` for tiled scoring, ``None`` without ``tile_size``; a tile
    must be the run's input size ``size``."""
    if tile_size is None:
        if tile_stride is not None:
            raise UsageError("--tile-stride applies only with --tile-size")
        return None
    if (tile_size, tile_size) != tuple(size):
        raise UsageError(f"--tile-size {tile_size}: the run scores {size[0]}x{size[1]} "
                         f"images, so its tiles are {size[0]} px (pass --tile-size {size[0]})")
    stride = tile_size if tile_stride is None else tile_stride
    if not 1 <= stride <= tile_size:
        raise UsageError(f"--tile-stride {stride}: must be in [1, {tile_size}] (the tile size)")
    return tuple(size), stride


def tiled_score_fn(method: Any, tiles: tuple[tuple[int, int], int], batch_size: int
                   ) -> Callable[[State, np.ndarray], Scores]:
    """``(state, images [B, H, W, 3]) -> Scores`` scoring each image by tiles
    (:func:`~anomjax.tiling.score_tiled`, ``batch_size`` tiles per call); the image score is
    the maximum of the blended map."""
    score_fn = jax.jit(method.score)

    def score(state: State, images: np.ndarray) -> Scores:
        maps, tops = [], []
        for image in images:
            heat, top = score_tiled(image, lambda t: np.asarray(score_fn(state, t).maps),
                                    tiles[0], tiles[1], batch_size)
            maps.append(heat)
            tops.append(top)
        return Scores(image=np.asarray(tops, np.float32), maps=np.stack(maps))

    return score


def _checkpoint_maps(method: Any, state: State, config: dict[str, Any], files: list[str],
                     batch_size: int, tiles: tuple[tuple[int, int], int] | None
                     ) -> Iterator[tuple[str, np.ndarray, float]]:
    """``(path, map [H, W], image score)`` of each file, scored with the checkpoint."""
    if tiles is not None:
        tiled = tiled_score_fn(method, tiles, batch_size)
        for path in files:
            scores = tiled(state, to_float(read_image(path))[None])
            yield path, scores.maps[0], float(scores.image[0])
        return
    score_fn = jax.jit(method.score)
    batches = iter_image_batches(files, batch_size, config["image_size"], config.get("crop"),
                                 resize_dtype=run_resize_dtype(config))
    for images, names in batches:
        n = len(names)
        if n < batch_size:  # one compiled shape for every batch
            pad = np.zeros((batch_size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad])
        scores = score_fn(state, images)
        yield from zip(names, np.asarray(scores.maps)[:n],
                       np.asarray(scores.image)[:n].tolist(), strict=True)


def _artefact_maps(scorer: deploy.Scorer, files: list[str], batch_size: int,
                   tiles: tuple[tuple[int, int], int] | None
                   ) -> Iterator[tuple[str, np.ndarray, float]]:
    """``(path, map [H, W], image score)`` of each file, scored with an exported scorer."""
    if tiles is not None:
        for path in files:
            scored = scorer.score_tiled(read_image(path), tiles[1], batch_size)
            yield path, scored.maps[0], float(scored.scores[0])
        return
    for start in range(0, len(files), batch_size):
        names = files[start:start + batch_size]
        images = np.stack([scorer.prepare(read_image(p)) for p in names])
        n = len(names)
        if n < batch_size:  # as the checkpoint's predict: one batch shape
            images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]),
                                                      images.dtype)])
        maps, scores = scorer.raw(images)
        yield from zip(names, maps[:n], scores[:n].tolist(), strict=True)


def _write_predictions(out: Path, scored: Iterator[tuple[str, np.ndarray, float]],
                       limits: dict[str, float], total: int, name: str, progress: bool
                       ) -> list[dict[str, Any]]:
    """Write each scored image's heat map PNG and ``.npy`` map; the rows of scores.csv."""
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, desc=f"predicting with {name}", unit="img",
              disable=not progress) as bar:
        for path, heat, image_score in scored:
            stem = f"{len(rows):04d}_{Path(path).stem}"
            save_heatmap(out / f"{stem}_heatmap.png", heat, limits["pixel_min"],
                         limits["pixel_max"])
            np.save(out / f"{stem}_map.npy", heat.astype(np.float32))
            rows.append({"path": path, "score": float(image_score),
                         "normalized_score": normalized(float(image_score), limits),
                         "anomalous": int(image_score >= limits["image_threshold"]),
                         "heatmap": f"{stem}_heatmap.png"})
            bar.update(1)
    return rows


def predict_threshold(run_dir: str | os.PathLike, threshold: float | None
                      ) -> dict[str, float]:
    """The run's threshold record with ``threshold`` (if given) as the image threshold."""
    record = load_threshold(run_dir)
    if record is None and threshold is None:
        raise RunError(f"{run_dir} has no {THRESHOLD_FILE}: run `anomjax test "
                       f"{run_dir} --data DIR` first (it picks the F1-optimal threshold, "
                       "or with --threshold-quantile Q one from good images only) or pass "
                       "--threshold")
    if record is None:
        t = float(threshold)
        spread = max(abs(t), 1e-6)
        record = {"image_threshold": t, "image_min": t - spread, "image_max": t + spread,
                  "pixel_min": 0.0, "pixel_max": t + spread}
    if threshold is not None:
        record["image_threshold"] = float(threshold)
    return record


def normalized(score: float, threshold: dict[str, float]) -> float:
    """Min-max normalisation around the threshold: threshold -> 0.5, clipped to [0, 1]
    (:func:`anomjax.deploy.normalize` with the run's ``image_min``/``image_max``; the
    exported scorer applies the same function)."""
    return float(deploy.normalize(score, threshold["image_threshold"], threshold["image_min"],
                                  threshold["image_max"]))


def _check_utf8_names(paths: Sequence[str]) -> None:
    """``scores.csv`` is UTF-8: refuse, before any work, a file name that cannot be written."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{os.fsencode(path)!r}: the file name is not valid UTF-8, so it "
                             "cannot be written to scores.csv; rename the file") from None


# ---------------------------------------------------------------------------- export


def export(run_dir: str | os.PathLike, out: str | os.PathLike, *,
           threshold: float | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the run in ``run_dir`` as a deployable scorer into the folder ``out`` (see
    :mod:`anomjax.deploy`): its ``jax.export``-ed scoring function for CPU, CUDA and TPU,
    its state in safetensors and a manifest; returns the manifest.

    The artefact carries the run's threshold record (``threshold`` overrides its image
    threshold, as in :func:`predict`; without either the call is refused). ``out`` must be
    new or empty, or an artefact to replace with ``overwrite``. Checked before any work.
    """
    config = load_method(run_dir)[1]
    check_image_settings(run_dir, config)
    limits = predict_threshold(run_dir, threshold)
    out = Path(out)
    if out.resolve() == Path(run_dir).resolve():
        raise UsageError(f"--out {out}: is the run folder itself; choose another folder")
    check_writable_dir(out, "--out")
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        if not (overwrite and is_artefact(out)
                and set(entries) <= {MANIFEST_FILE, PROGRAM_FILE, STATE_FILE}):
            raise RunError(f"--out {out}: the folder is not empty (holds "
                           f"{', '.join(entries[:4])}); choose another folder"
                           + (" or pass --overwrite to replace the exported scorer in it"
                              if is_artefact(out) else ""))
        (out / MANIFEST_FILE).unlink()  # first: a half-replaced folder is no artefact
    method, state, config = load_run(run_dir)
    return write_artefact(method, state, config, limits, out)


# ---------------------------------------------------------------------------- run settings


def run_resize_dtype(config: dict[str, Any]) -> str:
    """The run's ``resize_dtype`` (runs saved before it was recorded resized in uint8)."""
    return config.get("resize_dtype", "uint8")


def check_image_settings(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """A run's ``image_size``/``crop`` must be sizes the library accepts (a crafted
    config.json could ask for 100000 px), and its ``resize_dtype`` one of
    :data:`~anomjax.data.transforms.RESIZE_DTYPES`."""
    where = Path(run_dir) / CONFIG_FILE
    if run_resize_dtype(config) not in RESIZE_DTYPES:
        raise RunError(f"{where}: invalid resize_dtype {run_resize_dtype(config)!r}, "
                       f"expected one of {RESIZE_DTYPES}")
    for key in ("image_size", "crop"):
        value = config.get(key)
        if value is None and key == "crop":
            continue
        try:
            sides = as_hw(tuple(value) if isinstance(value, list) else value)
        except (TypeError, ValueError) as err:
            raise RunError(f"{where}: invalid {key} ({err})") from None
        if max(sides) > MAX_IMAGE_SIDE:
            raise RunError(f"{where}: {key}={value!r} exceeds {MAX_IMAGE_SIDE} px")
