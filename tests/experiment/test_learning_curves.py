"""experiments/learning_curves.py end to end on a tiny synthetic category: the JSON lines
(every evaluated step, metrics in [0, 1], the trivial baselines and the mean-image error
checked against an independent NumPy computation from the PNG files) and the PNG."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
SIZE = 32


def _script():
    spec = importlib.util.spec_from_file_location(
        "learning_curves", REPO_ROOT / "experiments" / "learning_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a defect pixel > score of a normal one) + half the ties, by sorting."""
    scores, labels = scores.ravel().astype(np.float64), labels.ravel() > 0
    neg = np.sort(scores[~labels])
    pos = scores[labels]
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training images, test images, test masks and test labels straight from the files."""
    def rgb(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"), np.float64) / 255.0

    train = np.stack([rgb(p) for p in sorted((folder / "train" / "good").glob("*.png"))])
    test, masks, labels = [], [], []
    for path in sorted((folder / "test").glob("*/*.png")):
        test.append(rgb(path))
        defect = path.parent.name
        if defect == "good":
            masks.append(np.zeros((SIZE, SIZE), bool))
        else:
            mask_path = folder / "ground_truth" / defect / f"{path.stem}_mask.png"
            masks.append(np.asarray(Image.open(mask_path)) > 127)
        labels.append(defect != "good")
    return train, np.stack(test), np.stack(masks), np.array(labels)


def test_learning_curve_end_to_end(tmp_path):
    script = _script()
    out, runs = tmp_path / "out", tmp_path / "runs"
    summaries = script.main(["--methods", "ae", "--datasets", "synthetic/nut",
                             "--image-size", str(SIZE), "--steps", "4", "--val-steps", "2",
                             "--batch-size", "8", "--set", "ae:width=4", "--set", "ae:latent=8",
                             "--out", str(out), "--run-root", str(runs)])
    assert [s["status"] for s in summaries] == ["ok"]

    lines = [json.loads(line) for line in (out / "ae_nut.jsonl").read_text().splitlines()]
    kinds = [line["kind"] for line in lines]
    assert kinds == ["config", "eval", "eval", "eval", "baselines", "reconstruction",
                     "summary"]
    config = lines[0]
    assert config["settings"] == {"width": "4", "latent": "8"}
    assert (config["steps"], config["batch_size"], config["image_size"]) == (4, 8, SIZE)
    evals = [line for line in lines if line["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 4] == config["eval_steps"]
    assert evals[0]["train_loss"] is None
    for e in evals:
        for m in ("pixel_auroc", "pixel_aupro", "image_auroc"):
            assert 0.0 <= e[m] <= 1.0, (e["step"], m, e[m])
    for e in evals[1:]:
        assert np.isfinite(e["train_loss"]) and e["train_loss"] > 0
    # The engine's own log holds the same validation numbers.
    engine = [json.loads(x) for x in (runs / "runs" / "ae_nut" / "metrics.jsonl")
              .read_text().splitlines()]
    val = {r["step"]: r["val/pixel_auroc"] for r in engine if "val/pixel_auroc" in r}
    assert val == {e["step"]: e["pixel_auroc"] for e in evals}
    assert [r["step"] for r in engine if "train/loss" in r] == [1, 2, 3, 4]

    # Baselines and the mean-image error, recomputed from the files written to disk.
    train, test, masks, labels = _read(runs / f"synthetic_{SIZE}" / "nut")
    assert masks.any() and (~masks).any() and labels.any() and (~labels).any()
    weights = np.array([0.299, 0.587, 0.114])
    test_luma, mean_luma = test @ weights, (train @ weights).mean(axis=0)
    baselines = lines[kinds.index("baselines")]
    expected_bright = _auroc(test_luma, masks)
    assert baselines["raw_bright"] == pytest.approx(expected_bright, abs=1e-6)
    assert baselines["raw_dark"] == pytest.approx(1.0 - expected_bright, abs=1e-6)
    assert baselines["brightness"] == pytest.approx(max(expected_bright, 1 - expected_bright),
                                                    abs=1e-6)
    assert baselines["mean_distance"] == pytest.approx(
        _auroc(np.abs(test_luma - mean_luma), masks), abs=1e-6)
    recon = lines[kinds.index("reconstruction")]
    assert recon["available"] is True
    mean_err = ((train.mean(axis=0)[None] - test) ** 2).mean(axis=(1, 2, 3))
    assert recon["mean_image_mse_good"] == pytest.approx(mean_err[~labels].mean(), rel=1e-4)
    assert recon["mean_image_mse_defect"] == pytest.approx(mean_err[labels].mean(), rel=1e-4)
    assert 0.0 < recon["recon_mse_good"] < 1.0

    summary = lines[-1]
    assert summary["step0_pixel_auroc"] == evals[0]["pixel_auroc"]
    assert summary["final_pixel_auroc"] == evals[-1]["pixel_auroc"]
    floor = max(evals[0]["pixel_auroc"], baselines["brightness"], baselines["mean_distance"])
    assert summary["bar"] == pytest.approx(floor + 0.05)
    assert summary["cleared"] == (evals[-1]["pixel_auroc"] >= floor + 0.05)
    assert summary["seconds_per_step"] > 0

    png = (out / "ae_nut.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(png) < 100_000


def test_eval_steps_are_log_spaced():
    script = _script()
    assert script.eval_steps(1000) == [0, 25, 50, 100, 200, 500, 1000]
    assert script.eval_steps(1500) == [0, 25, 50, 100, 200, 500, 1000, 1500]
    assert script.eval_steps(6) == [0, 6]
