"""The research workflow under bad input and faults: each case of the probe
``shared/reviews/workflow-bad-input-and-faults.md`` (numbered as there) reproduced, and
held: no table reports wrong numbers, nothing is lost or left behind, one clear line."""

import json
import shutil
import time
from pathlib import Path

import pytest

from anomjax.cli import main
from anomjax.data.synthetic import write_mvtec
from tests.conftest import REPO_ROOT
from tests.experiment.test_workflow import PADIM, TINY, _cli, _lines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_mvtec(root, categories=("metal", "wood"), n_train=8, n_test_good=3, n_test_defect=3,
                image_size=32, seed=2, disable=True)
    return root


def _sweep_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", PADIM, f"--config.data={root / 'metal'}", *TINY, *extra,
            "--out", str(out)]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_1_two_sweeps_into_one_folder_at_once_record_each_run_once(root, tmp_path):
    out = tmp_path / "sweep"
    args = _sweep_args(root, out, "--sweep", "seed=0,1")
    first = _cli(*args)
    time.sleep(1.0)
    second = _cli(*args)
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    lines = _lines(out)
    assert sorted(line["run"] for line in lines) == ["seed=0", "seed=1"]
    assert "| 2 |" in (out / "summary.md").read_text()  # two seeds, not four


def test_2_a_sweep_folder_refuses_another_config_and_starts_over_on_request(root, tmp_path,
                                                                            capsys):
    out = tmp_path / "sweep"
    assert main(_sweep_args(root, out, "--sweep", "seed=0")) == 0
    assert main(_sweep_args(root, out, "--config.method.sigma=2", "--sweep", "seed=0")) == 2
    assert "made for another config (method.sigma=4.0 (folder) vs 2.0 (now))" in _err(capsys)
    assert main(_sweep_args(root, out, "--sweep", "seed=0,1")) == 0  # more seeds: same config
    assert len(_lines(out)) == 2
    assert main(_sweep_args(root, out, "--config.method.sigma=2", "--sweep", "seed=0",
                            "--overwrite")) == 0
    (line,) = _lines(out)
    assert json.loads((out / "runs" / "seed=0" / "experiment.json").read_text())[
        "method"]["sigma"] == 2.0 and line["run"] == "seed=0"


def test_3_benchmark_names_a_skipped_category_and_what_the_mean_is_over(root, tmp_path,
                                                                       capsys):
    data = tmp_path / "data"
    shutil.copytree(root / "metal", data / "metal")
    shutil.copytree(root / "wood", data / "wood")
    shutil.rmtree(data / "wood" / "ground_truth")
    shutil.copytree(root / "wood" / "train", data / "train_only" / "train")  # no test split
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(data), "--method", "padim", "--image-size", "32",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipping {data / 'wood'}" in err and f"skipping {data / 'train_only'}" in err
    table = (out / "benchmark.md").read_text()
    assert "mean of 1: metal**" in table and "skipped category `wood`" in table
    assert "skipped category `train_only`: " in table and "test folder is missing" in table


@pytest.fixture(scope="module")
def padim_run(root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("padim") / "run"
    assert main(["fit", "--method", "padim", "--data", str(root / "metal"), "--image-size",
                 "32", "--out", str(run)]) == 0
    assert main(["test", str(run), "--data", str(root / "metal")]) == 0
    return run


def test_11_12_an_edited_or_foreign_config_is_refused(root, padim_run, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(padim_run, edited)
    config = json.loads((edited / "config.json").read_text())
    config["params"]["taps"] = ["stage2", "stage3"]
    (edited / "config.json").write_text(json.dumps(config))
    assert main(["test", str(edited), "--data", str(root / "metal")]) == 2
    assert "were edited after the fit" in _err(capsys)

    other = tmp_path / "patchcore"
    assert main(["fit", "--method", "patchcore", "--data", str(root / "metal"),
                 "--image-size", "32", "--out", str(other)]) == 0
    shutil.copy(padim_run / "config.json", other / "config.json")
    assert main(["test", str(other), "--data", str(root / "metal")]) == 2
    assert "does not describe the fitted state" in _err(capsys)


def test_18_a_copied_threshold_is_refused_and_a_threshold_names_its_category(
        root, padim_run, tmp_path, capsys):
    threshold = json.loads((padim_run / "threshold.json").read_text())
    assert threshold["category"] == "metal" and threshold["fitted_category"] is True
    other = tmp_path / "other"
    assert main(["fit", "--method", "padim", "--data", str(root / "metal"), "--image-size",
                 "32", "--seed", "1", "--out", str(other)]) == 0
    shutil.copy(padim_run / "threshold.json", other / "threshold.json")
    assert main(["predict", str(other), str(root / "metal" / "test"), "--out",
                 str(tmp_path / "pred")]) == 2
    assert "the threshold was chosen for another run" in _err(capsys)
    # Tested on a category it was not fitted on: said, and recorded.
    assert main(["test", str(other), "--data", str(root / "wood")]) == 0
    assert "is not a category the run was fitted on" in capsys.readouterr().err
    assert json.loads((other / "threshold.json").read_text())["fitted_category"] is False


def test_7_8_run_follows_fits_folder_rules(root, padim_run, tmp_path, capsys):
    held = tmp_path / "held"
    shutil.copytree(padim_run, held)
    run = ["run", "--config", PADIM, f"--config.data={root / 'metal'}", *TINY]
    assert main([*run, "--out", str(held)]) == 2
    assert "the folder is not empty" in _err(capsys)
    assert main([*run, "--config.resize_dtype=int64", "--out", str(held), "--overwrite"]) == 2
    assert not (held / "experiment.json").exists()  # nothing written before the config holds
    assert main([*run, "--out", str(held), "--overwrite"]) == 0
    assert (held / "experiment.json").exists() and (held / "metrics.json").exists()
    fresh = tmp_path / "fresh"
    stpm = str(REPO_ROOT / "experiments" / "configs" / "stpm.py")
    assert main(["run", "--config", stpm, f"--config.data={root / 'metal'}",
                 "--config.image_size=64", "--config.epochs=-1", "--out", str(fresh)]) == 2
    assert "config.epochs must be an integer >= 1" in _err(capsys)
    assert not fresh.exists()


def test_9_a_dotted_hyper_parameter_is_swept_as_the_docstring_says(root, tmp_path):
    out = tmp_path / "sweep"
    assert main(_sweep_args(root, out, "--sweep", "method.sigma=2,4")) == 0
    assert sorted(line["run"] for line in _lines(out)) == ["sigma=2.0", "sigma=4.0"]
    zipped = tmp_path / "zipped"
    assert main(_sweep_args(root, zipped, "--zip", "method.sigma=2,4", "--zip",
                            "seed=0,1")) == 0
    assert sorted(line["swept"]["method.sigma"] for line in _lines(zipped)) == [2.0, 4.0]


def test_10_a_corrupt_results_line_names_the_file_and_the_line(root, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = _sweep_args(root, out, "--sweep", "seed=0")
    assert main(args) == 0
    results = out / "results.jsonl"
    results.write_text(results.read_text() + '{"run": "seed=1", "swe\n')
    assert main(args) == 2
    assert f"{results}, line 2: not valid JSON" in _err(capsys)
    results.write_text(results.read_text().splitlines()[0] + "\n{}\n")
    assert main(args) == 2
    assert f"{results}, line 2: not a result line" in _err(capsys)


def test_14_15_sweep_values_and_ids(root, tmp_path, capsys):
    assert main(_sweep_args(root, tmp_path / "bad", "--sweep", "seed=0,abc")) == 2
    assert "--sweep 'seed=0,abc': field seed: cannot read 'abc' as int" in _err(capsys)
    data = tmp_path / "x" / "metal", tmp_path / "y" / "metal"
    for folder in data:
        shutil.copytree(root / "metal", folder)
    out = tmp_path / "same_name"
    assert main(["sweep", "--config", PADIM, *TINY, "--sweep",
                 f"data={data[0]},{data[1]}", "--out", str(out)]) == 0
    ids = sorted(line["run"] for line in _lines(out))
    assert len(ids) == 2 and ids[0] != ids[1] and all(i.startswith("data=metal~") for i in ids)


@pytest.mark.parametrize("body, fragment", [
    ("def get_config(arg=None):\n    raise RuntimeError('boom')\n",
     "get_config(None) failed: RuntimeError: boom"),
    ("import not_a_module_anywhere\n",
     "loading the config file failed: ModuleNotFoundError"),
])
def test_13_a_failing_config_file_is_one_line(tmp_path, capsys, body, fragment):
    config = tmp_path / "cfg.py"
    config.write_text(body)
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and str(config) in err[0]


def test_4_16_17_populations_are_bounded_and_named(root, tmp_path, capsys):
    run = ["run", "--config", PADIM, f"--config.data={root / 'metal'}", *TINY]
    started = time.perf_counter()
    assert main([*run, "--seeds", "100000", "--out", str(tmp_path / "huge")]) == 2
    assert "config.seeds must be an integer in [1, 1024]" in _err(capsys)
    assert time.perf_counter() - started < 30
    out = tmp_path / "pop"
    assert main([*run, "--seeds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "padim member 0 on metal" in printed.out and "padim member 1 on metal" in printed.out
    assert main(["test", str(out), "--data", str(root / "metal")]) == 2
    assert f"holds a population of 2 members, each its own run: use {out / 'members' / '0'}" \
        in _err(capsys)


def test_6_f_anogan_resumed_with_another_budget_is_refused(root, tmp_path, capsys):
    fit = ["fit", "--method", "f_anogan", "--data", str(root / "metal"), "--image-size", "32",
           "--batch-size", "4", "--set", "width=4", "--set", "latent=8", "--set",
           "n_critic=2", "--out", str(tmp_path / "fan")]
    assert main([*fit, "--epochs", "2"]) == 0
    assert main([*fit, "--epochs", "4", "--resume"]) == 2
    assert "the phase boundaries move from steps" in _err(capsys)

