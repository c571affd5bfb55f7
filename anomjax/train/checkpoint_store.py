"""Orbax checkpoints of the train state inside a run folder."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from anomjax.train.state import TrainState


class CheckpointStore:
    """``run_dir/checkpoints/<step>/`` written by an Orbax ``CheckpointManager``.

    Each checkpoint holds the whole ``TrainState`` and a small JSON record (``meta``) of how
    the run was laid out (global batch size, steps per epoch, data seed, process count) and
    of the method's hyper-parameters, so a resume with another layout or configuration is
    refused instead of silently reading the data in another order. Only the last
    ``keep`` checkpoints are kept; writes are atomic (a killed run leaves no half checkpoint).

    In a single-process run (``background=None`` picks it then) a save copies the state to
    host memory and writes it in a background thread while training goes on (one write at a
    time; every other call waits for it, and a failed write is raised at the next call). With
    several processes Orbax synchronises them inside a save, so writes stay in the caller.
    """

    def __init__(self, run_dir: str | Path, keep: int = 3, background: bool | None = None):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(run_dir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))
        if background is None:
            background = jax.process_count() == 1
        self._writer = ThreadPoolExecutor(1, "checkpoint") if background else None
        self._pending: Future | None = None

    def wait(self) -> None:
        """Block until the write in progress (if any) is on disk; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        self.wait()
        return self.manager.latest_step()

    def save(self, train_state: TrainState, meta: dict[str, Any]) -> int:
        """Write a checkpoint named by ``train_state.step``; returns that step (the write may
        still be in progress, see the class docstring)."""
        self.wait()
        step = int(jax.device_get(train_state.step))
        if step in self.manager.all_steps():
            return step
        if self._writer is None:
            self._write(step, train_state, meta)
        else:  # copies: the training step donates (reuses) the buffers of the state
            host = jax.tree.map(np.array, jax.device_get(train_state))
            self._pending = self._writer.submit(self._write, step, host, meta)
        return step

    def _write(self, step: int, train_state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(train_state), meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def delete(self, step: int) -> None:
        """Remove checkpoint ``step`` (e.g. one whose weights turned out to diverge)."""
        self.wait()
        if step in self.manager.all_steps():
            self.manager.delete(step)

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Read checkpoint ``step`` into the structure, shapes and shardings of ``like``."""
        self.wait()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"checkpoint {self.directory / str(step)} does not match this "
                             f"method's state (another method or hyper-parameters?): {err}"
                             ) from None
        return out["state"], out["meta"]

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
            self.manager.wait_until_finished()
            self.manager.close()
