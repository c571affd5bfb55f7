"""Run folders: one run per folder, atomic writes that never follow links, locks, strict JSON,
and thresholds only from splits that can fix them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from anomjax.evaluate import Predictions, threshold_record
from anomjax.methods import make_method
from anomjax.run_folder import (
    RunError,
    load_threshold,
    prepare_run_dir,
    run_lock,
    save_run,
    write_json,
)


def test_write_json_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "threshold.json")
    write_json(tmp_path / "threshold.json", {"image_threshold": 1.0})
    assert victim.read_text() == "precious"
    assert not (tmp_path / "threshold.json").is_symlink()
    assert json.loads((tmp_path / "threshold.json").read_text()) == {"image_threshold": 1.0}


def test_write_json_is_strict_json_with_null_for_nan(tmp_path):
    write_json(tmp_path / "m.json", {"auroc": float("nan"), "n": np.float32(np.inf),
                                     "per": {"a": [1.0, np.nan]}})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auroc": None, "n": None, "per": {"a": [1.0, None]}}


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    write_json(tmp_path / "t.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "t.json", {"a": object()})
    assert json.loads((tmp_path / "t.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_prepare_run_dir_refuses_other_runs_and_replaces_one_whole(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "threshold.json").write_text("{}")
    with pytest.raises(RunError, match="the folder is not empty .holds config.json, "
                                       "threshold.json.; pass --overwrite"):
        prepare_run_dir(run)
    assert prepare_run_dir(run, resume=True) == run.absolute()
    assert (run / "threshold.json").exists()
    prepare_run_dir(run, overwrite=True)
    assert list(run.iterdir()) == []
    (run / "checkpoints").mkdir()  # left by a fit that failed before its first step
    (run / "metrics.jsonl").write_text("")
    assert prepare_run_dir(run) == run.absolute()


def test_save_run_drops_the_threshold_of_the_previous_state(tmp_path):
    method = make_method("padim")
    (tmp_path / "threshold.json").write_text('{"image_threshold": 36.9}')
    save_run(tmp_path, method, {"mean": np.zeros(3, np.float32)}, {"image_size": 64})
    save_run(tmp_path, method, {"mean": np.ones(3, np.float32)}, {"image_size": 64})
    assert not (tmp_path / "threshold.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "state"]


def test_run_lock_is_exclusive(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunError, match="in use by another anomjax process"), \
                run_lock(tmp_path):
            pass
    with run_lock(tmp_path):  # released
        pass


def test_corrupt_threshold_file_is_named(tmp_path):
    (tmp_path / "threshold.json").write_text('{"image_threshold": ')
    with pytest.raises(RunError, match=r"threshold\.json: cannot read the threshold file"):
        load_threshold(tmp_path)
    assert load_threshold(tmp_path / "none") is None


def _predictions(labels, scores) -> Predictions:
    n = len(labels)
    return Predictions(paths=np.array([f"{i}.png" for i in range(n)]),
                       labels=np.asarray(labels, np.int32),
                       defect_types=np.array(["cut" if y else "good" for y in labels]),
                       image_scores=np.asarray(scores, np.float32),
                       maps=np.zeros((n, 2, 2), np.float32), masks=np.zeros((n, 2, 2), np.uint8))


def test_no_f1_threshold_from_a_split_of_one_class():
    record, note = threshold_record(_predictions([1, 1, 1], [5.0, 6.0, 7.0]))
    assert record is None and "no good images" in note
    record, note = threshold_record(_predictions([0, 0], [1.0, 2.0]))
    assert record is None and "--threshold-quantile" in note
    record, _ = threshold_record(_predictions([0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0]))
    assert record["image_threshold"] == 3.0


def test_quantile_threshold_uses_the_good_scores_only():
    scores = [1.0, 2.0, 3.0, 4.0, 100.0]
    record, note = threshold_record(_predictions([0, 0, 0, 0, 1], scores), quantile=0.5)
    assert record["image_threshold"] == pytest.approx(np.quantile([1.0, 2.0, 3.0, 4.0], 0.5))
    assert "4 good images" in note
    with pytest.raises(ValueError, match="needs good images"):
        threshold_record(_predictions([1, 1], [1.0, 2.0]), quantile=0.5)
