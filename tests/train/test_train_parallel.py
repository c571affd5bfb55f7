"""Data parallelism: 8 fake CPU devices and two processes on loopback match one device."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from train_toy import ToyConvAE, toy_split

from anomjax.train import train_method

HERE = Path(__file__).parent
RUNNER = HERE / "train_toy_run.py"


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Every process's output; all are killed if one outlives ``timeout`` seconds."""
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    return logs


def _single_device_reference() -> dict[str, np.ndarray]:
    """The runner's training (same key, data, global batch 8) on one device, in this process."""
    state = train_method(ToyConvAE(), jax.random.key(3), toy_split(n=16), epochs=2, batch_size=8,
                         num_workers=0, devices=jax.devices()[:1], disable=True)
    return {"/".join(str(k) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _assert_same_params(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=2e-4, err_msg=name)


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
    out = tmp_path / "sharded.npz"
    code = ("import jax; assert jax.device_count() == 8, jax.devices(); import runpy, sys; "
            f"sys.argv = ['r', {str(out)!r}, '--epochs', '2', '--batch-size', '8']; "
            f"runpy.run_path({str(RUNNER)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(8), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_params(dict(np.load(out)), _single_device_reference())


def _read_saved_run(run: Path) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(run / "state")
    return {"/".join(str(k) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_device(tmp_path):
    """jax.distributed on 127.0.0.1 with gloo CPU collectives; 2 processes x 2 devices."""
    out, port = tmp_path / "multiprocess.npz", _free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(RUNNER), str(out), "--epochs", "2", "--batch-size", "8",
         "--run-dir", str(tmp_path / "run"), "--process-id", str(i), "--num-processes", "2",
         "--port", str(port), "--save-run", str(tmp_path / "saved")], env=_env(2),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = _wait_all(procs, timeout=300)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2", "4"]
    reference = _single_device_reference()
    _assert_same_params(dict(np.load(out)), reference)
    # The final run files are written once, by process 0 alone.
    saved = tmp_path / "saved"
    assert json.loads((saved / "config.json").read_text())["process"] == 0
    _assert_same_params(_read_saved_run(saved), reference)


@pytest.mark.slow
def test_a_sweep_under_jax_distributed_runs_each_run_on_all_processes(tmp_path):
    """Two processes of one jax.distributed job share a sweep of two trained runs: each run
    trains on the devices of both (its collectives match), process 0 records it once."""
    from anomjax.data.synthetic import write_mvtec

    write_mvtec(tmp_path / "data", categories=("nut",), n_train=8, n_test_good=2,
                n_test_defect=2, image_size=32, seed=0, disable=True)
    port, out = _free_port(), tmp_path / "sweep"
    config = Path(__file__).parents[2] / "experiments" / "configs" / "ae.py"
    args = [sys.executable, "-m", "anomjax.cli", "sweep", "--distributed", "--config",
            str(config), f"--config.data={tmp_path / 'data' / 'nut'}",
            "--config.image_size=32", "--config.batch_size=4", "--config.steps=2",
            "--config.method.width=4", "--config.method.latent=8", "--config.save_maps=false",
            "--sweep", "seed=0,1", "--out", str(out)]
    procs = []
    for i in range(2):
        env = {**_env(1), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
               "PYTHONPATH": str(Path(__file__).parents[2])}
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = _wait_all(procs, timeout=400)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(x["run"] for x in lines) == ["seed=0", "seed=1"]
    for run in ("seed=0", "seed=1"):
        config_json = json.loads((out / "runs" / run / "config.json").read_text())
        assert config_json["optimizer_steps"] == 2
        checkpoints = out / "runs" / run / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2"]
