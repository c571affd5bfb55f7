"""Runs, sweeps (resume after a kill, two processes sharing one), the benchmark protocol and
the multi-class setting, end to end on tiny synthetic categories."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anomjax.cli import main
from anomjax.data.multiclass import open_multiclass
from anomjax.data.synthetic import write_mvtec
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
PADIM = str(REPO_ROOT / "experiments" / "configs" / "padim.py")
TINY = ["--config.image_size=32", "--config.crop=None", "--config.batch_size=8"]
METRIC_KEYS = {"image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
               "pixel_aupro", "method", "backbone", "image_size", "n_train", "n_test",
               "fit_seconds", "test_seconds", "images_per_second", "peak_rss_mb"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_mvtec(root, categories=("metal", "wood"), n_train=8, n_test_good=3, n_test_defect=3,
                image_size=32, seed=1, disable=True)
    return root


def _lines(sweep: Path) -> list[dict]:
    return [json.loads(x) for x in (sweep / "results.jsonl").read_text().splitlines()]


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anomjax.cli", *args], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_run_writes_config_metrics_maps_and_plots(root, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--config", PADIM, f"--config.data={root / 'metal'}", *TINY,
                 "--out", str(out)]) == 0
    experiment = json.loads((out / "experiment.json").read_text())
    assert experiment["method"]["name"] == "padim" and experiment["image_size"] == 32
    (record,) = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(record) and record["category"] == "metal"
    saved = np.load(out / "maps" / "metal" / "maps.npz")
    assert saved["maps"].shape == (6, 32, 32)
    assert (out / "plots" / "metal_curves.png").stat().st_size > 1000
    # The same run through `anomjax test` gives the same metrics: both share one code path.
    json_path = tmp_path / "m.json"
    assert main(["test", str(out), "--data", str(root / "metal"), "--json", str(json_path)]) == 0
    again = json.loads(json_path.read_text())
    assert again["image_auroc"] == record["image_auroc"]
    assert again["pixel_aupro"] == record["pixel_aupro"]


def test_sweep_resumes_after_a_kill_and_trains_nothing_when_done(root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["sweep", "--config", PADIM, f"--config.data={root / 'metal'}", *TINY,
            "--sweep", "seed=0,1,2", "--out", str(sweep)]
    proc = _cli(*args)
    deadline = time.monotonic() + 240
    while not ((sweep / "results.jsonl").is_file() and _lines(sweep)):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _lines(sweep)
    assert 1 <= len(first) < 3
    assert main(args) == 0
    lines = _lines(sweep)
    assert [x["swept"]["seed"] for x in lines] == [0, 1, 2]
    assert lines[: len(first)] == first  # finished runs were kept, not redone
    assert METRIC_KEYS <= set(lines[0])
    stamp = (sweep / "results.jsonl").stat().st_mtime_ns
    assert main(args) == 0  # everything finished: nothing is trained or appended
    assert (sweep / "results.jsonl").stat().st_mtime_ns == stamp
    summary = (sweep / "summary.md").read_text()
    values = [x["image_auroc"] for x in lines]
    assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in summary
    assert (sweep / "results.csv").read_text().count("\n") == 4


def test_two_processes_share_a_sweep(root, tmp_path):
    sweep = tmp_path / "shared"
    args = ["sweep", "--config", PADIM, f"--config.data={root / 'wood'}", *TINY,
            "--sweep", "seed=0,1", "--out", str(sweep), "--process-count", "2"]
    procs = [_cli(*args, "--process-index", str(i)) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    lines = _lines(sweep)
    assert sorted(x["swept"]["seed"] for x in lines) == [0, 1]
    assert sorted(p.name for p in (sweep / "runs").iterdir()) == ["seed=0", "seed=1"]


def test_multiclass_fit_trains_on_the_union_and_tests_per_category(root, tmp_path):
    union, categories = open_multiclass([root / "metal", root / "wood"], image_size=32)
    assert len(union.train) == sum(len(c.train) for c in categories) == 16
    assert {s.path for s in union.train.samples} == {
        s.path for c in categories for s in c.train.samples}
    with pytest.raises(ValueError, match="more than once"):
        open_multiclass([root / "metal", root / "metal"], image_size=32)
    out = tmp_path / "multi"
    assert main(["fit", "--method", "padim", "--data", str(root / "metal"), "--data",
                 str(root / "wood"), "--image-size", "32", "--batch-size", "8",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["n_train"] == 16 and len(config["data"]) == 2
    for category in ("metal", "wood"):
        metrics = tmp_path / f"{category}.json"
        assert main(["test", str(out), "--data", str(root / category), "--json",
                     str(metrics)]) == 0
        assert json.loads(metrics.read_text())["n_test"] == 6


def test_benchmark_reports_every_category_and_the_mean(root, tmp_path):
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(root), "--method", "padim", "--image-size", "32",
            "--out", str(out)]
    assert main(args) == 0
    lines = _lines(out / "padim")
    assert sorted(x["category"] for x in lines) == ["metal", "wood"]
    table = (out / "benchmark.md").read_text()
    for x in lines:
        assert f"| padim | {root.name}/{x['category']} |" in table
    mean = np.mean([x["image_auroc"] for x in lines])
    assert f"mean of 2: metal, wood** |  |  |  | {mean:.3f} |" in table
    assert main(args) == 0 and len(_lines(out / "padim")) == 2  # resumed: nothing redone


def test_learning_rate_population_records_and_saves_each_member_at_its_rate(root, tmp_path):
    """``config.learning_rates`` trains one member per rate in one run of a sweep; each
    member's saved run holds its own rate and tests, through ``anomjax test``, to its own
    results line, and the summary has one row per rate."""
    sweep = tmp_path / "rates"
    assert main(["sweep", "--config", str(REPO_ROOT / "experiments" / "configs" / "ae.py"),
                 f"--config.data={root / 'metal'}", *TINY, "--config.epochs=1",
                 "--config.method.width=4", "--config.method.latent=8",
                 "--config.learning_rates=(0.0001, 0.01)", "--out", str(sweep)]) == 0
    lines = _lines(sweep)
    assert [(r["member"], r["swept"]) for r in lines] == [
        (0, {"method.learning_rate": 0.0001}), (1, {"method.learning_rate": 0.01})]
    assert lines[0]["pixel_auroc"] != lines[1]["pixel_auroc"]
    summary = (sweep / "summary.md").read_text()
    assert "| 0.0001 |" in summary and "| 0.01 |" in summary
    run = sweep / "runs" / lines[0]["run"]
    for i, rate in enumerate((0.0001, 0.01)):
        saved = json.loads((run / "members" / str(i) / "config.json").read_text())
        assert saved["params"]["learning_rate"] == rate, saved
        json_path = tmp_path / f"m{i}.json"
        assert main(["test", str(run / "members" / str(i)), "--data", str(root / "metal"),
                     "--json", str(json_path)]) == 0
        assert json.loads(json_path.read_text())["pixel_auroc"] == lines[i]["pixel_auroc"]


def test_run_config_with_several_folders_trains_one_model_and_tests_each(root, tmp_path):
    """``--config.data=(A,B)``: the multi-class setting through a config (one record per
    category, one model trained on both categories' images)."""
    out = tmp_path / "union"
    folders = f"({root / 'metal'},{root / 'wood'})"
    assert main(["run", "--config", PADIM, f"--config.data={folders}", *TINY,
                 "--out", str(out)]) == 0
    records = json.loads((out / "metrics.json").read_text())
    assert [r["category"] for r in records] == ["metal", "wood"]
    assert {r["n_train"] for r in records} == {16}
