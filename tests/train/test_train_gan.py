"""A GAN (GANomaly: generator then discriminator update per step) through the engine: 8 fake
devices match one device, and a SIGKILLed run resumes bit-identical to an unbroken one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from gan_run import gan_split, tiny_ganomaly

from anomjax.train import train_method

RUNNER = Path(__file__).parent / "gan_run.py"
pytestmark = pytest.mark.slow


def _train(run_dir=None, resume=False, devices=None):
    return train_method(tiny_ganomaly(), jax.random.key(3), gan_split(), epochs=2, batch_size=8,
                        run_dir=run_dir, resume=resume, checkpoint_every=1, num_workers=0,
                        devices=devices, disable=True)


def _flat(state) -> dict[str, np.ndarray]:
    return {"/".join(str(k) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_eight_devices_match_one_device(tmp_path):
    out = tmp_path / "sharded.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(RUNNER), str(out), "--epochs", "2",
                           "--batch-size", "8", "--checkpoint-every", "1"], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = dict(np.load(out)), _flat(_train(devices=jax.devices()[:1]))
    assert set(got) == set(want)
    assert any("discriminator" in k for k in want) and any("batch_stats" in k for k in want)
    for name in want:  # synchronised BatchNorm: the same statistics over the global batch
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    run_dir = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, str(RUNNER), str(tmp_path / "unused.npz"), "--epochs", "2",
         "--batch-size", "8", "--run-dir", str(run_dir), "--checkpoint-every", "1",
         "--slow-after", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:  # 3 steps at full speed (checkpoints 1-3), then the 4th batch stalls
        while not (metrics.is_file() and '"step": 3' in metrics.read_text()):
            assert child.poll() is None, child.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the child never reached step 3"
            time.sleep(0.2)
        time.sleep(1.0)  # let the step-3 checkpoint finish
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -9
    resumed = _train(run_dir, resume=True)
    chex.assert_trees_all_equal(resumed, _train())
    lines = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2, 3, 4]
    assert {"train/loss_g", "train/loss_d", "train/loss_con"} <= set(lines[0])
