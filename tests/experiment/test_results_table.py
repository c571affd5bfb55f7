"""experiments/results.py states every trained row's budget in optimiser steps."""

import importlib.util

import pytest

from tests.conftest import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location(
        "results_script", REPO_ROOT / "experiments" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_state_optimiser_steps_recorded_or_planned():
    results = _script()
    # Recorded by a run with --steps: as stored, no epochs.
    assert results.row_steps({"steps": 1000, "epochs": None, "n_train": 40}) == "1000"
    # Measured before steps were recorded: 210 images in full batches of 32 are 6 per epoch.
    assert results.row_steps({"epochs": 5, "n_train": 210, "batch_size": 32}) == "30 (5 ep)"
    # 40 images at the default batch of 16: 2 full batches per epoch.
    assert results.row_steps({"epochs": 25, "n_train": 40}) == "50 (25 ep)"
    assert results.row_steps({"epochs": None, "n_train": 210}) == "-"  # a fitted method


def test_steps_and_epochs_are_exclusive_budgets():
    results = _script()
    args = results.parse_args(["--steps", "500", "--methods", "stpm"])
    assert args.steps == 500 and args.epochs is None
    with pytest.raises(SystemExit):
        results.parse_args(["--steps", "500", "--epochs", "3"])
