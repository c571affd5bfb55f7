"""The reconstruction and generative methods through the ``anomjax`` command: fit one epoch,
resume to two, test, predict (tiny networks on a tiny 32 px synthetic category)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from anomjax.cli import main
from anomjax.data.synthetic import write_mvtec

pytestmark = pytest.mark.slow

TINY_SETTINGS = {
    "ae": ["width=4", "latent=8", "loss_type=msgms"],
    "memae": ["width=4", "slots=8"],
    "vae": ["width=4", "latent=8", "map_type=gradient"],
    "favae": ["width=4", "latent=8", "taps=stage2"],
    "anogan": ["width=4", "latent=8", "search_steps=3"],
    "f_anogan": ["width=4", "latent=8", "n_critic=2"],
    "ganomaly": ["width=4", "latent=8"],
}


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_mvtec(root, categories=("wood",), n_train=8, n_test_good=2, n_test_defect=3,
                image_size=32, seed=5, disable=True)
    return root / "wood"


@pytest.mark.parametrize("method", sorted(TINY_SETTINGS))
def test_fit_resume_test_predict(method, category, tmp_path):
    run = tmp_path / "run"
    fit = ["fit", "--method", method, "--data", str(category), "--image-size", "32",
           "--batch-size", "4", "--out", str(run)]
    for setting in TINY_SETTINGS[method]:
        fit += ["--set", setting]
    assert main([*fit, "--epochs", "1"]) == 0
    assert main([*fit, "--epochs", "2", "--resume"]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train/loss" in r] == [1, 2, 3, 4]
    metrics_file = tmp_path / "metrics.json"
    assert main(["test", str(run), "--data", str(category), "--batch-size", "4",
                 "--json", str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert metrics["method"] == method and metrics["n_test"] == 5
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(category / "test"), "--out", str(out),
                 "--batch-size", "4"]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 5
