"""The ``anomjax`` command end to end on a tiny synthetic category, and its error lines."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomjax.cli import main
from anomjax.data.synthetic import write_mvtec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_mvtec(root, categories=("metal",), n_train=8, n_test_good=4, n_test_defect=6,
                image_size=64, seed=3, disable=True)
    return root / "metal"


@pytest.fixture(scope="module")
def run_dir(category, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "padim"
    assert main(["fit", "--method", "padim", "--data", str(category), "--image-size", "64",
                 "--batch-size", "4", "--out", str(out)]) == 0
    return out


def test_fit_writes_a_run(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "padim" and config["n_train"] == 8 and config["image_size"] == 64
    assert (run_dir / "state").is_dir()


def test_test_then_reload_in_a_new_process_gives_identical_numbers(run_dir, category, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["test", str(run_dir), "--data", str(category), "--batch-size", "4",
                 "--json", str(first), "--maps", str(tmp_path / "maps"),
                 "--overlays", str(tmp_path / "png")]) == 0
    subprocess.run([sys.executable, "-m", "anomjax.cli", "test", str(run_dir), "--data",
                    str(category), "--batch-size", "4", "--json", str(second)], check=True,
                   capture_output=True)
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    for key in ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
                "pixel_aupro"):
        assert a[key] == b[key], key
    assert a["n_test"] == 10 and a["method"] == "padim" and a["backbone"] == "efficientnet_lite0"
    assert a["pixel_auroc"] > 0.6  # defects are found, not just a number
    maps = np.load(tmp_path / "maps" / "maps.npz")
    assert maps["maps"].shape == (10, 64, 64) and maps["masks"].dtype == np.uint8
    assert maps["image_scores"].dtype == np.float32 and list(maps["labels"]).count(1) == 6
    assert len(list((tmp_path / "png").glob("*.png"))) == 10
    assert (run_dir / "threshold.json").is_file()


def test_predict_writes_scores_and_heatmaps(run_dir, category, tmp_path):
    assert main(["test", str(run_dir), "--data", str(category), "--batch-size", "4"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(run_dir), str(category / "test"), "--out", str(out),
                 "--batch-size", "4"]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 10
    assert all(0.0 <= float(r["normalized_score"]) <= 1.0 for r in rows)
    assert {r["anomalous"] for r in rows} <= {"0", "1"}
    assert len(list(out.glob("*_heatmap.png"))) == 10


@pytest.mark.parametrize(("argv", "message"), [
    (["fit", "--method", "nope", "--data", ".", "--out", "x"], "unknown method 'nope'"),
    (["fit", "--method", "padim", "--data", "/no/such/dir", "--out", "x"], "/no/such/dir"),
    (["fit", "--method", "padim", "--data", ".", "--set", "radius=2", "--out", "x"],
     "no hyper-parameter 'radius'"),
    (["fit", "--method", "padim", "--data", ".", "--set", "bad", "--out", "x"],
     "expected KEY=VALUE"),
    (["test", "/no/such/run", "--data", "."], "not a run directory"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_predict_without_threshold_says_what_to_do(category, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--method", "padim", "--data", str(category), "--image-size", "64",
                 "--batch-size", "8", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), str(category / "test"), "--out", str(tmp_path / "p")]) == 2
    assert "run `anomjax test" in capsys.readouterr().err


def test_list_names_methods_backbones_and_weights(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("patchcore", "padim", "so_padim", "spade", "stpm", "mvtec", "fabric"):
        assert name in out
    lite0 = next(line for line in out.splitlines() if "efficientnet_lite0" in line)
    assert "efficientnet-lite0-57934424.pth" in lite0
