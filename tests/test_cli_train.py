"""Every method that learns weights through the ``anomjax`` command: fit one epoch, resume to
two, test, predict (tiny configurations on a tiny synthetic category)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from anomjax.cli import main
from anomjax.data.synthetic import write_mvtec

pytestmark = pytest.mark.slow

TINY_SETTINGS = {
    "stpm": ["taps=stage2,stage3"],
    "reverse_distillation": [],
    "mkd": ["taps=stage2,stage3", "score_taps=1"],
    "uninformed_students": ["patch_sizes=17", "students=2", "width=16", "descriptor_dim=16",
                            "distill_size=32", "teacher_batch=16", "teacher_steps=5"],
    "dfr": ["taps=stage1,stage2"],
    "differnet": ["taps=stage5", "coupling_blocks=2", "fc_internal=32", "n_transforms=1",
                  "n_transforms_test=2"],
    "cflow": ["taps=stage2,stage3", "condition_dim=16", "coupling_blocks=2"],
    "csflow": ["tap=stage3", "coupling_blocks=1", "hidden=16"],
    "fastflow": ["taps=stage2,stage3", "flow_steps=2"],
}


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_mvtec(root, categories=("wood",), n_train=8, n_test_good=2, n_test_defect=3,
                image_size=64, seed=5, disable=True)
    return root / "wood"


@pytest.mark.parametrize("method", sorted(TINY_SETTINGS))
def test_fit_resume_test_predict(method, category, tmp_path):
    run = tmp_path / "run"
    fit = ["fit", "--method", method, "--data", str(category), "--image-size", "64",
           "--batch-size", "4", "--out", str(run)]
    for setting in TINY_SETTINGS[method]:
        fit += ["--set", setting]
    assert main([*fit, "--epochs", "1"]) == 0
    assert main([*fit, "--epochs", "2", "--resume"]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train/loss" in r] == [1, 2, 3, 4]  # 2 steps per epoch
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
