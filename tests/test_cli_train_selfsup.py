"""The self-supervised and one-class methods through the ``anomjax`` command: fit one epoch,
resume to two, test, predict (tiny configurations; the same checks as test_cli_train.py)."""

from __future__ import annotations

import csv
import json

import pytest
from test_cli_train import category  # noqa: F401  (the shared tiny category fixture)

from anomjax.cli import main

pytestmark = pytest.mark.slow

TINY_SETTINGS = {
    "draem": ["rec_width=4", "seg_width=4"],
    "draem+sspcab": ["rec_width=4", "seg_width=4", "sspcab=true"],
    "riad": ["width=4", "depth=2", "cell_sizes=4,8"],
    "cutpaste": ["tap=stage2", "head_widths=8", "patch_size=32", "patch_stride=32"],
    "patch_svdd": ["dim=8", "pairs_per_image=1", "stride_32=16"],
    "deep_svdd": ["widths=4,4", "rep_dim=8", "pretrain_steps=2"],
    "fcdd": ["head_widths=8"],
}


@pytest.mark.parametrize("config", sorted(TINY_SETTINGS))
def test_fit_resume_test_predict(config, category, tmp_path):  # noqa: F811
    method = config.split("+")[0]
    run = tmp_path / "run"
    fit = ["fit", "--method", method, "--data", str(category), "--image-size", "64",
           "--batch-size", "4", "--out", str(run)]
    for setting in TINY_SETTINGS[config]:
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
    assert len(rows) == 5 and {r["anomalous"] for r in rows} <= {"0", "1"}
