"""Method + dataset split -> metrics, per-defect breakdown, ``maps.npz`` and overlays.

This is the one evaluation path for every method: it scores a split batch by batch with the
method's jitted ``score``, then hands ``Scores``, labels and masks to :mod:`anomjax.metrics`.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from anomjax.methods.protocol import overrides
from anomjax.metrics import f1_adaptive_threshold, quantile_threshold, subset_metrics
from anomjax.types import Batch, Scores, State
from anomjax.visualize import overlay_panel

ScoreFn = Callable[[State, jax.Array], Scores]


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Everything scored on a split, host-side, at the evaluation resolution.

    Attributes:
      paths: ``[N]`` source paths.
      labels: ``[N]`` int32, 1 = defective.
      defect_types: ``[N]`` defect type names (``"good"`` for normal).
      image_scores: ``[N]`` float32.
      maps: ``[N, H, W]`` float32 anomaly maps.
      masks: ``[N, H, W]`` uint8 ground truth in ``{0, 1}``.
    """

    paths: np.ndarray
    labels: np.ndarray
    defect_types: np.ndarray
    image_scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray

    def save(self, path: Path) -> None:
        """Write ``maps.npz`` with the keys ``paths, labels, image_scores, maps, masks``."""
        np.savez_compressed(path, paths=self.paths, labels=self.labels,
                            defect_types=self.defect_types, image_scores=self.image_scores,
                            maps=self.maps, masks=self.masks)


def padded_batches(batches: Iterable[Batch], batch_size: int) -> Iterator[tuple[Batch, int]]:
    """Yield ``(batch, n_valid)`` with every batch zero-padded to ``batch_size`` images.

    A fixed batch shape means the jitted scorer compiles once, not again for the last batch.
    """
    for batch in batches:
        n = len(batch)
        if n < batch_size:
            pad = batch_size - n
            images = np.concatenate([batch.images, np.zeros((pad, *batch.images.shape[1:]),
                                                            batch.images.dtype)])
            batch = dataclasses.replace(batch, images=images)
        yield batch, n


def predict_split(method: Any, state: State, split: Any, *, batch_size: int = 16,
                  progress: bool = True, score_fn: ScoreFn | None = None) -> Predictions:
    """Score every image of ``split`` (an ``anomjax.data`` split) with ``method`` (its
    jitted ``score``, or ``score_fn``, e.g. a tiled scorer)."""
    score_fn = score_fn or jax.jit(method.score)
    if overrides(method, "calibrate_test"):  # a normaliser taken over the split itself
        state = method.calibrate_test(state, split.batches(batch_size))
    paths, labels, types, image_scores, maps, masks = [], [], [], [], [], []
    with tqdm(total=len(split), desc=f"scoring {method.name}", unit="img",
              disable=not progress) as bar:  # closed before any error is printed
        for batch, n in padded_batches(split.batches(batch_size), batch_size):
            scores = score_fn(state, batch.images)
            image = np.asarray(scores.image, np.float32)[:n]
            pixel = np.asarray(scores.maps, np.float32)[:n]
            _check_scores(method.name, batch, image, pixel)
            paths += batch.paths
            types += batch.defect_types
            labels.append(batch.labels)
            masks.append(batch.masks)
            image_scores.append(image)
            maps.append(pixel)
            bar.update(n)
    if not paths:
        raise ValueError("the test split holds no images")
    return Predictions(paths=np.array(paths), labels=np.concatenate(labels).astype(np.int32),
                       defect_types=np.array(types), image_scores=np.concatenate(image_scores),
                       maps=np.concatenate(maps), masks=np.concatenate(masks).astype(np.uint8))


def evaluate(method: Any, state: State, split: Any, *, batch_size: int = 16,
             maps_dir: str | Path | None = None, overlays_dir: str | Path | None = None,
             threshold_quantile: float | None = None, per_defect: bool = True,
             progress: bool = True, score_fn: ScoreFn | None = None) -> dict[str, Any]:
    """Score ``split`` and compute every shared metric.

    Returns a dict with the metric keys of :func:`anomjax.metrics.compute_metrics`, plus
    ``per_defect`` (the same metrics on good + one defect type; ``{}`` with
    ``per_defect=False``, which skips them), ``threshold`` (see
    :func:`threshold_record`; ``None`` when the split cannot fix one, with the reason in
    ``threshold_note``), ``n_test``,
    ``test_seconds``, ``images_per_second`` and ``peak_rss_mb``. With ``maps_dir`` it writes
    ``maps.npz``; with ``overlays_dir`` one overlay PNG per test image. ``score_fn``
    replaces ``jax.jit(method.score)`` (``(state, images) -> Scores``).
    """
    start = time.perf_counter()
    preds = predict_split(method, state, split, batch_size=batch_size, progress=progress,
                          score_fn=score_fn)
    seconds = time.perf_counter() - start
    subsets = {"all": np.ones(len(preds.labels), bool),
               **(defect_subsets(preds.defect_types) if per_defect else {})}
    metrics = subset_metrics(preds.image_scores, preds.labels, preds.maps, preds.masks, subsets)
    result: dict[str, Any] = dict(metrics.pop("all"))
    result["per_defect"] = metrics
    result["threshold"], result["threshold_note"] = threshold_record(preds, threshold_quantile)
    result.update(n_test=int(len(preds.labels)), test_seconds=round(seconds, 3),
                  images_per_second=round(len(preds.labels) / max(seconds, 1e-9), 3),
                  peak_rss_mb=peak_rss_mb())
    if maps_dir is not None:
        Path(maps_dir).mkdir(parents=True, exist_ok=True)
        preds.save(Path(maps_dir) / "maps.npz")
    if overlays_dir is not None:
        write_overlays(preds, split, Path(overlays_dir), batch_size=batch_size)
    return result


def defect_subsets(defect_types: np.ndarray) -> dict[str, np.ndarray]:
    """``{defect type: [N] bool}``: the good images plus the images of that type, for each
    defect type in turn (``{}`` without good images)."""
    good = defect_types == "good"
    if not good.any():
        return {}
    return {defect: good | (defect_types == defect)
            for defect in sorted(set(defect_types.tolist()) - {"good"})}


def threshold_record(preds: Predictions, quantile: float | None = None
                     ) -> tuple[dict[str, Any] | None, str]:
    """The image threshold and score ranges for deployment-time normalisation, and a note.

    By default the F1-optimal threshold, which needs good *and* defective images: on a
    split of defects only every threshold up to the lowest score has F1 = 1, so it would
    flag nearly every good image, and on good images only F1 is undefined; both give
    ``(None, reason)``. With ``quantile`` the threshold is that quantile of the good images'
    scores (:func:`anomjax.metrics.quantile_threshold`), which needs good images only.
    """
    good = preds.labels == 0
    n_good = int(good.sum())
    if quantile is not None:
        if n_good == 0:
            raise ValueError("a quantile threshold needs good images, and the test split "
                             "holds none")
        threshold = quantile_threshold(preds.image_scores[good], quantile)
        note = f"quantile {quantile} of the scores of {n_good} good images"
    elif n_good == 0:
        return None, ("the test split holds no good images: the F1-optimal threshold would "
                      "be the lowest defect score and flag nearly every good image; test on "
                      "a split with good images (--threshold-quantile Q needs only those)")
    elif n_good == len(good):
        return None, ("the test split holds no defective images, so F1 is undefined; pass "
                      "--threshold-quantile Q (e.g. 0.99) to set it from these good images")
    else:
        threshold = float(f1_adaptive_threshold(preds.image_scores, preds.labels))
        note = f"F1-optimal on {n_good} good and {len(good) - n_good} defective images"
    record = {"image_threshold": threshold,
              "image_min": float(preds.image_scores.min()),
              "image_max": float(preds.image_scores.max()),
              "pixel_min": float(preds.maps.min()), "pixel_max": float(preds.maps.max()),
              "source": note}
    return record, note


def write_overlays(preds: Predictions, split: Any, out_dir: Path, *, batch_size: int) -> None:
    """One PNG per image: image | heat map | ground-truth contour, with a shared colour bar.

    Images are decoded a second time here rather than kept from scoring, so evaluation holds
    only maps and masks in memory, never all images.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    vmin, vmax = float(np.min(preds.maps)), float(np.max(preds.maps))
    index = 0
    with tqdm(total=len(preds.paths), desc="overlays", unit="img") as bar:
        for batch in split.batches(batch_size):
            for image, mask in zip(batch.images, batch.masks, strict=True):
                name = overlay_name(str(preds.paths[index]), str(preds.defect_types[index]),
                                    index)
                title = f"{preds.defect_types[index]}  score {preds.image_scores[index]:.4g}"
                overlay_panel(image, preds.maps[index], mask, vmin, vmax, title).save(
                    out_dir / name)
                index += 1
                bar.update(1)


def overlay_name(path: str, defect_type: str, index: int) -> str:
    """A unique, readable PNG name for one image's overlay."""
    return f"{index:04d}_{defect_type}_{Path(path).stem}.png"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _check_scores(name: str, batch: Batch, image: np.ndarray, pixel: np.ndarray) -> None:
    """Refuse malformed or non-finite method output, naming the offending images."""
    n, h, w = batch.masks.shape[0], *batch.masks.shape[1:]
    if pixel.shape != (n, h, w) or image.shape != (n,):
        raise ValueError(f"{name}.score returned maps {pixel.shape} and image scores "
                         f"{image.shape}; expected ({n}, {h}, {w}) and ({n},)")
    bad = ~(np.isfinite(image) & np.isfinite(pixel).all(axis=(1, 2)))
    if bad.any():
        which = ", ".join(p for p, b in zip(batch.paths, bad, strict=True) if b)
        raise FloatingPointError(f"{name} produced NaN or infinite scores for: {which}")
