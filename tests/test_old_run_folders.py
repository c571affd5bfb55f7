"""A run folder written before the run API existed (commit 39f565a) is still tested and
predicted exactly as that commit did: ``tests/fixtures/run_39f565a`` holds the run folder
of a tiny AE and the metrics, maps and scores that 39f565a's ``anomjax test`` and
``anomjax predict`` gave on the synthetic category below."""

import json
import shutil

import numpy as np
import pytest

from anomjax import runs
from anomjax.data.synthetic import write_mvtec
from tests.conftest import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "run_39f565a"


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("old_run")
    write_mvtec(root / "data", categories=["nut"], n_train=8, n_test_good=3, n_test_defect=3,
                image_size=32, seed=0, disable=True)
    shutil.copytree(FIXTURE / "ae", root / "ae")
    return root


def test_an_old_run_folder_is_tested_as_before(old_run):
    tested = runs.test(old_run / "ae", old_run / "data" / "nut", maps_dir=old_run / "maps",
                       progress=False)
    expected = json.loads((FIXTURE / "expected_metrics.json").read_text())
    for key, value in expected.items():
        assert tested.record[key] == pytest.approx(value, abs=1e-6), key
    saved, before = np.load(old_run / "maps" / "maps.npz"), np.load(FIXTURE / "expected.npz")
    order = [list(before["paths"]).index(p.split("data/nut/")[1]) for p in saved["paths"]]
    np.testing.assert_allclose(saved["image_scores"], before["image_scores"][order], rtol=1e-5)
    np.testing.assert_allclose(saved["maps"], before["maps"][order], rtol=1e-5, atol=1e-7)


def test_an_old_run_folder_predicts_as_before(old_run):
    if not (old_run / "ae" / "threshold.json").exists():
        runs.test(old_run / "ae", old_run / "data" / "nut", progress=False)
    rows = runs.predict(old_run / "ae", [old_run / "data" / "nut" / "test" / "good"],
                        old_run / "predicted", progress=False)
    expected = json.loads((FIXTURE / "expected_predict.json").read_text())
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == [e["name"] for e in expected]
    np.testing.assert_allclose([r["score"] for r in rows], [e["score"] for e in expected],
                               rtol=1e-5)
    assert [r["anomalous"] for r in rows] == [e["anomalous"] for e in expected]
