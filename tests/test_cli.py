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


def test_the_resize_dtype_of_fit_is_reused_by_test_and_predict(category, tmp_path):
    run = tmp_path / "run"
    # 48 px: the 64 px images are resized (at their own size both dtypes are the same).
    assert main(["fit", "--method", "padim", "--data", str(category), "--image-size", "48",
                 "--batch-size", "4", "--resize-dtype", "float32", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["resize_dtype"] == "float32"
    assert main(["test", str(run), "--data", str(category), "--batch-size", "4",
                 "--maps", str(tmp_path / "maps")]) == 0
    tested = np.load(tmp_path / "maps" / "maps.npz")
    out = tmp_path / "pred"
    images = sorted((category / "test").rglob("*.png"))
    assert main(["predict", str(run), *map(str, images), "--out", str(out),
                 "--batch-size", "4"]) == 0
    by_path = {str(Path(p).resolve()): i for i, p in enumerate(tested["paths"])}
    for i, image in enumerate(images):
        predicted = np.load(out / f"{i:04d}_{image.stem}_map.npy")
        np.testing.assert_allclose(predicted, tested["maps"][by_path[str(image.resolve())]],
                                   rtol=1e-5, atol=1e-5)


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


# ---------------------------------------------------------------------------- faults


def _one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert "Traceback" not in err and "\n" not in err
    return err


@pytest.fixture
def fake_run(run_dir, tmp_path):
    """A copy of the fitted run's config only (enough for every check made before work)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text((run_dir / "config.json").read_text())
    return fake


@pytest.mark.parametrize(("args", "message"), [
    (["--image-size", "100000"], "an image side must be in [1, 4096], got 100000"),
    (["--batch-size", "0"], "the batch size must be in [1, 4096], got 0"),
    (["--seed", "99999999999999999999"], "the seed must be in"),
    (["--set", "sigma=-1"], "sigma"),
    (["--set", "sigma=nan"], "sigma"),
    (["--steps", "0"], "a count must be in [1, 1000000000], got 0"),
    (["--accumulate", "2"], "padim is fitted in one pass: the training engine's settings"),
    (["--profile-steps", "5"], "expected A:B"),
    (["--frozen-cache-mb", "-1"], "frozen_cache_mb must be a finite number >= 0"),
])
def test_out_of_range_settings_are_refused_before_any_work(category, tmp_path, capsys, args,
                                                           message):
    _one_line_error(capsys, ["fit", "--method", "padim", "--data", str(category),
                             "--out", str(tmp_path / "run"), *args], message)
    assert not (tmp_path / "run").exists()


def test_fit_refuses_a_file_or_another_run_as_out(category, run_dir, tmp_path, capsys):
    fit = ["fit", "--method", "padim", "--data", str(category), "--image-size", "64"]
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, [*fit, "--out", str(tmp_path / "file")], "exists and is not a folder")
    _one_line_error(capsys, [*fit, "--out", str(run_dir)], "the folder is not empty")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    _one_line_error(capsys, [*fit, "--out", str(tmp_path / "mine"), "--overwrite"],
                    "not an anomjax run folder")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_a_run_folder_in_use_is_refused(run_dir, category, capsys):
    from anomjax.run_folder import run_lock

    with run_lock(run_dir):
        _one_line_error(capsys, ["test", str(run_dir), "--data", str(category)],
                        "is in use by another anomjax process")


def test_broken_run_files_are_named_before_any_work(fake_run, category, tmp_path, capsys):
    config = fake_run / "config.json"
    good = config.read_text()
    config.write_text("{x")
    _one_line_error(capsys, ["test", str(fake_run), "--data", str(category)],
                    f"{config}: cannot read the run config")
    config.write_text(good.replace('"image_size": 64', '"image_size": 100000'))
    _one_line_error(capsys, ["test", str(fake_run), "--data", str(category)],
                    "image_size=100000 exceeds 4096 px")
    config.write_text(good.replace('"resize_dtype": "uint8"', '"resize_dtype": "int4"'))
    _one_line_error(capsys, ["test", str(fake_run), "--data", str(category)],
                    f"{config}: invalid resize_dtype 'int4'")
    config.write_text(good.replace('"params": {', '"params": {"bank_dtype": "x", '))
    _one_line_error(capsys, ["test", str(fake_run), "--data", str(category)],
                    f"{config}: invalid run config")
    config.write_text(good)
    (fake_run / "threshold.json").write_text('{"image_threshold": 1.0}')
    _one_line_error(capsys, ["predict", str(fake_run), str(category / "test"), "--out",
                             str(tmp_path / "p")], "'image_min' must be a finite number")


def test_output_path_mistakes_are_refused_before_any_work(fake_run, category, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["test", str(fake_run), "--data", str(category), "--json",
                             str(tmp_path)], "is a folder; give a file name")
    _one_line_error(capsys, ["test", str(fake_run), "--data", str(category), "--maps",
                             str(tmp_path / "file")], "exists and is not a folder")
    _one_line_error(capsys, ["predict", str(fake_run), str(category / "test"), "--threshold",
                             "1", "--out", str(tmp_path / "file")], "exists and is not a folder")
    _one_line_error(capsys, ["predict", str(fake_run), str(category / "test"), "--threshold",
                             "nan", "--out", str(tmp_path / "p")], "must be a finite number")


def test_predict_names_a_non_utf8_file_before_scoring(fake_run, category, tmp_path, capsys):
    import os
    import shutil

    folder = tmp_path / "images"
    folder.mkdir()
    source = next((category / "test" / "good").iterdir())
    shutil.copy(source, folder / "ok.png")
    shutil.copy(source, os.fsdecode(bytes(folder) + b"/bad\xff\xfe.png"))
    _one_line_error(capsys, ["predict", str(fake_run), str(folder), "--threshold", "1",
                             "--out", str(tmp_path / "p")], "bad\\xff\\xfe.png': the file name "
                                                            "is not valid UTF-8")
    assert not (tmp_path / "p" / "scores.csv").exists()


def test_quantile_threshold_from_good_images_only(run_dir, category, tmp_path):
    """A good-only split cannot give an F1 threshold; --threshold-quantile sets one."""
    import shutil

    good_only = tmp_path / "good_only"
    shutil.copytree(category, good_only, ignore=shutil.ignore_patterns("ground_truth"))
    for defect in (good_only / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)
    assert main(["test", str(run_dir), "--data", str(good_only), "--batch-size", "4",
                 "--threshold-quantile", "0.75", "--maps", str(tmp_path / "maps"),
                 "--json", str(tmp_path / "m.json")]) == 0
    threshold = json.loads((run_dir / "threshold.json").read_text())
    scores = np.load(tmp_path / "maps" / "maps.npz")["image_scores"]
    assert threshold["image_threshold"] == pytest.approx(np.quantile(scores, 0.75), rel=1e-6)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and json.loads(text)["image_auroc"] is None  # strict JSON


def test_the_readme_demo_runs_end_to_end(tmp_path, capsys):
    """`anomjax demo` (the README's main job) on one small category: data, fit, test, table,
    overlays; run again into the same folder it replaces its runs."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--image-size", "32", "--categories", "nut"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "nut" in printed and "image_auroc" in printed
    assert list((out / "overlays" / "nut").glob("*.png"))
    assert (out / "runs" / "nut" / "threshold.json").exists()
    assert main(args) == 0
