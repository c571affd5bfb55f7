"""One experiment: fit or train the configured method, save it, test it, write its files.

The run folder holds what ``anomjax fit`` and ``anomjax test`` write (``config.json``,
``state/``, training checkpoints and logs, ``threshold.json``) plus::

    experiment.json    the whole experiment config
    metrics.json       one metrics record per test category (the keys of ``anomjax test --json``)
    maps/<category>/maps.npz   scores, maps and masks of each test split (``save_maps``)
    plots/<category>_curves.png   image ROC and pixel PRO curves

With ``config.seeds = K > 1`` (or K ``config.learning_rates``) the K members are trained
together (one vmapped step, see :mod:`anomjax.methods.population`) and each member gets the
files above in ``members/<i>/``; the records carry ``member: i`` (and its
``learning_rate``), and each member's ``config.json`` holds its own learning rate.

A run folder follows ``fit``'s rules (:mod:`anomjax.runs`): the config is checked, and the
data opened, before anything is written; a non-empty folder is refused unless asked to
replace it whole (``overwrite``) or to continue its training (``resume``, which also
refuses a config that differs from the folder's ``experiment.json``, naming the fields).
It calls the run API's functions (``train_or_fit``, ``metrics_record``), so a config run
and ``anomjax fit`` + ``anomjax test`` agree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from anomjax import runs
from anomjax.data.multiclass import open_multiclass
from anomjax.evaluate import evaluate, peak_rss_mb
from anomjax.experiment.config import (
    build_method,
    changed_fields,
    data_folders,
    engine_settings,
    flatten,
)
from anomjax.methods.population import MAX_SIZE, Population, member_state
from anomjax.run_folder import (
    THRESHOLD_FILE,
    RunError,
    read_json,
    read_run_config,
    save_run,
    write_json,
)
from anomjax.runs import UsageError

EXPERIMENT_FILE = "experiment.json"
METRICS_FILE = "metrics.json"


def _batch_size(config: ml_collections.ConfigDict, method: Any) -> int:
    if config.batch_size is not None:
        return int(config.batch_size)
    return int(method.default_batch_size or runs.DEFAULT_BATCH_SIZE)


def _population(method: Any, config: ml_collections.ConfigDict
                ) -> tuple[Any, list[tuple[Any, dict[str, Any]]]]:
    """``(what to fit, [(member i's own method, its record tag)])``: ``method`` itself
    when one model is trained, else a :class:`Population` of ``config.seeds`` members or
    one member per ``config.learning_rates`` entry."""
    seeds, rates = config.seeds, tuple(config.learning_rates or ())
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SIZE:
        raise ValueError(f"config.seeds must be an integer in [1, {MAX_SIZE}] (K models are "
                         f"trained together in memory), got {seeds!r}")
    if rates and seeds not in (1, len(rates)):
        raise ValueError(f"config.seeds ({seeds}) and config.learning_rates ({len(rates)} "
                         "rates) disagree: set seeds to 1 or to the number of rates")
    size = len(rates) or seeds
    if size == 1 and not rates:
        return method, [(method, {})]
    population = Population(method, size, learning_rates=rates or None,
                            shard_members=bool(config.shard_members))
    if not rates:
        return population, [(method, {"member": i}) for i in range(size)]
    return population, [(dataclasses.replace(method, learning_rate=float(r)),
                         {"member": i, "learning_rate": float(r)})
                        for i, r in enumerate(rates)]


def run_experiment(config: ml_collections.ConfigDict, run_dir: str | Path, *,
                   overwrite: bool = False, resume: bool = False, lock: bool = True,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Fit/train, save, test; returns one metrics record per test category.

    ``resume`` continues a killed run in ``run_dir`` (its training checkpoints, if any) and
    requires the same config; ``overwrite`` replaces the run in ``run_dir`` whole;
    ``lock=False`` when the caller already holds the folder's lock (a sweep).
    """
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: pick one")
    method = build_method(config)
    fitted, member_methods = _population(method, config)
    train_folders = data_folders(config.data)
    if not train_folders:
        raise ValueError("config.data is empty: set it to a category folder "
                         "(--config.data=DIR) or a tuple of folders")
    trains = method.kind == "train"
    steps = config.get("steps") if trains else None
    epochs = config.epochs if trains and steps is None else None
    for name, value in (("epochs", epochs), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"config.{name} must be an integer >= 1 or None, got {value!r}")
    images = {"image_size": config.image_size, "crop": config.crop,
              "resize_dtype": config.get("resize_dtype", "uint8")}
    union, categories = open_multiclass(train_folders, layout=config.layout, **images)
    test_folders = data_folders(config.test_data) or train_folders
    tests = categories if test_folders == train_folders else open_multiclass(
        test_folders, layout=config.layout, **images)[1]
    batch_size = _batch_size(config, method)
    engine = engine_settings(config) if trains else None
    with runs.open_run_folder(run_dir, resume=resume, overwrite=overwrite,
                              lock=lock) as run_dir:
        primary = jax.process_index() == 0  # under jax.distributed only process 0 writes
        if primary:
            _check_same_experiment(run_dir, config)
            write_json(run_dir / EXPERIMENT_FILE, config.to_dict())
        checkpoints = run_dir / "checkpoints"
        resume_training = trains and checkpoints.is_dir() and any(checkpoints.iterdir())
        trained = runs.train_or_fit(fitted, union.train, seed=int(config.seed),
                                    batch_size=batch_size, run_dir=run_dir, epochs=epochs,
                                    steps=steps, resume=resume_training,
                                    engine=engine,
                                    progress=progress)
        state = trained.state
        extra = {"data": [str(Path(f).resolve()) for f in train_folders],
                 "layout": union.layout, **images, "seed": int(config.seed),
                 "n_train": len(union.train), **trained.budget,
                 "fit_seconds": round(trained.seconds, 3), "fit_peak_rss_mb": peak_rss_mb()}
        members = ([(run_dir, method, state, {})] if fitted is method else
                   [(run_dir / "members" / str(i), member_method, member_state(state, i), tag)
                    for i, (member_method, tag) in enumerate(member_methods)])
        diverged_at = np.asarray(state.get("diverged_at", np.full(len(members), -1)))
        records = []
        for (member_dir, member_method, member, tag), step in zip(members, diverged_at,
                                                                  strict=True):
            if step >= 0:  # the engine kept the other members training
                records.append(_diverged_record(member_method, tag, int(step), tests, extra))
                continue
            save_run(member_dir, member_method, member, {**extra, **tag})
            for dataset in tests:
                records.append(_test_member(member_dir, member_method, member, dataset, tag,
                                            extra, batch_size, config, len(tests) == 1,
                                            progress))
        if primary:
            write_json(run_dir / METRICS_FILE, records)
    return records


def _diverged_record(method: Any, tag: dict[str, Any], step: int, tests: list[Any],
                     extra: dict[str, Any]) -> dict[str, Any]:
    """The record of a population member that diverged: no metrics, its index, rate and
    step (one record for all the test categories, which it was not tested on)."""
    rate = f" at learning rate {tag['learning_rate']:g}" if "learning_rate" in tag else ""
    error = (f"member {tag['member']}{rate} diverged at step {step} (non-finite update); "
             "the other members trained on")
    return {"category": ",".join(d.name for d in tests), **tag, "method": method.name,
            "status": "failed", "error": error, "diverged_at_step": step,
            "image_size": extra["image_size"], "n_train": extra["n_train"],
            **{k: None for k in runs.METRIC_KEYS}}


def _test_member(member_dir: Path, method: Any, state: Any, dataset: Any,
                 tag: dict[str, Any], extra: dict[str, Any], batch_size: int,
                 config: ml_collections.ConfigDict, write_threshold: bool,
                 progress: bool) -> dict[str, Any]:
    """Test one (member) model on one category; its metrics record (every process scores,
    process 0 writes)."""
    primary = jax.process_index() == 0
    maps_dir = member_dir / "maps" / dataset.name if config.save_maps and primary else None
    with runs.caller_mesh(method):
        result = evaluate(method, state, dataset.test, batch_size=batch_size,
                          maps_dir=maps_dir, progress=progress)
    if primary and write_threshold and result["threshold"] is not None:
        runs.stamp_threshold(result["threshold"], read_run_config(member_dir), dataset.root)
        write_json(member_dir / THRESHOLD_FILE, result["threshold"])
    if maps_dir is not None:
        plot_curves(maps_dir / "maps.npz", member_dir / "plots" / f"{dataset.name}_curves.png",
                    title=f"{method.name} on {dataset.name}")
    return {"category": dataset.name, **tag, **runs.metrics_record(method, extra, result)}


def _check_same_experiment(run_dir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuse to continue a run folder whose ``experiment.json`` holds another config."""
    path = run_dir / EXPERIMENT_FILE
    if not path.is_file():
        return
    changed = changed_fields(flatten(read_json(path, "experiment config")),
                             flatten(json.loads(json.dumps(config.to_dict(), default=str))))
    if changed:
        raise RunError(f"{path}: the run folder holds another experiment ({'; '.join(changed)});"
                       " use the same config, or pass --overwrite to replace the run")


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` ``[T + 1]`` of image scores at every distinct threshold, from (0, 0)."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(labels)[last]
    fp = np.cumsum(1.0 - labels)[last]
    return (np.r_[0.0, fp / max(fp[-1], 1.0)], np.r_[0.0, tp / max(tp[-1], 1.0)])


def plot_curves(maps_file: Path, out: Path, *, title: str) -> None:
    """Image ROC and pixel PRO curves (FPR up to 0.3 shaded) of one test split, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomjax.metrics.pro import pro_curve

    saved = np.load(maps_file)
    labels, scores = saved["labels"], saved["image_scores"]
    fig, (ax_roc, ax_pro) = plt.subplots(1, 2, figsize=(9, 4))
    if 0 < labels.sum() < len(labels):
        fpr, tpr = roc_curve(scores, labels)
        ax_roc.plot(fpr, tpr)
    ax_roc.set(xlabel="false-positive rate (images)", ylabel="true-positive rate",
               title="image ROC", xlim=(0, 1), ylim=(0, 1.01))
    if saved["masks"].any() and not saved["masks"].all():
        fpr, pro, _ = pro_curve(saved["maps"], saved["masks"])
        ax_pro.plot(fpr, pro)
        ax_pro.axvspan(0, 0.3, alpha=0.1)
    ax_pro.set(xlabel="false-positive rate (normal pixels)", ylabel="per-region overlap",
               title="pixel PRO", xlim=(0, 1), ylim=(0, 1.01))
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
