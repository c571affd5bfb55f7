"""A training process killed with SIGKILL and resumed ends bit-identical to an unbroken run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import pytest
from train_toy import ToyConvAE, toy_split

from anomjax.train import train_method

RUNNER = Path(__file__).parent / "train_toy_run.py"


def _train(run_dir=None, resume=False):
    return train_method(ToyConvAE(), jax.random.key(3), toy_split(n=16), epochs=2, batch_size=4,
                        run_dir=run_dir, resume=resume, checkpoint_every=2, num_workers=0,
                        disable=True)


@pytest.mark.slow
def test_sigkill_after_step_three_then_resume_is_bit_identical(tmp_path):
    run_dir = tmp_path / "run"
    # The child trains 3 steps at full speed (checkpoint at step 2), then stalls on batch 4.
    child = subprocess.Popen(
        [sys.executable, str(RUNNER), str(tmp_path / "unused.npz"), "--epochs", "2",
         "--batch-size", "4", "--run-dir", str(run_dir), "--checkpoint-every", "2",
         "--slow-after", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    checkpoint_two = run_dir / "checkpoints" / "2"  # renamed into place once complete
    deadline = time.monotonic() + 240
    try:  # the step-2 checkpoint is written in the background while training goes on
        while not (metrics.is_file() and '"step": 3' in metrics.read_text()
                   and checkpoint_two.is_dir()):
            assert child.poll() is None, child.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the child never reached step 3 and checkpoint 2"
            time.sleep(0.2)
    finally:
        child.kill()  # SIGKILL: no cleanup, no final checkpoint
        child.wait()
    assert child.returncode == -9
    done = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert done == [2]

    resumed = _train(run_dir, resume=True)
    chex.assert_trees_all_equal(resumed, _train())
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == list(range(1, 9))  # the killed run's step-3 line was replaced
