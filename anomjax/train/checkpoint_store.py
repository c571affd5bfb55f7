"""Orbax checkpoints of the train state inside a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from anomjax.train.state import TrainState


class CheckpointStore:
    """``run_dir/checkpoints/<step>/`` written by an Orbax ``CheckpointManager``.

    Each checkpoint holds the whole ``TrainState`` and a small JSON record (``meta``) of how
    the run was laid out (global batch size, steps per epoch, data seed, process count) and
    of the method's hyper-parameters, so a resume with another layout or configuration is
    refused instead of silently reading the data in another order. Only the last
    ``keep`` checkpoints are kept; writes are atomic (a killed run leaves no half checkpoint).

    Saves are Orbax's asynchronous checkpointing: ``save`` returns once the state is copied
    to host memory (so the training step may donate its buffers) and the files are written in
    the background, in every process of a multi-host run without blocking the others' steps;
    one write is in flight at a time (every other call waits for it first), and a failed
    write is raised at the next call.
    """

    def __init__(self, run_dir: str | Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(run_dir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def wait(self) -> None:
        """Block until the write in progress (if any) is on disk; raise its error."""
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        self.wait()
        return self.manager.latest_step()

    def save(self, train_state: TrainState, meta: dict[str, Any]) -> int:
        """Write a checkpoint named by ``train_state.step``; returns that step (the write may
        still be in progress, see the class docstring)."""
        self.wait()
        step = int(jax.device_get(train_state.step))
        if step not in self.manager.all_steps():
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(train_state), meta=ocp.args.JsonSave(meta)))
        return step

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
                             "method's state (another method or hyper-parameters, or a state "
                             "layout of an older anomjax: train again into another run "
                             f"folder): {err}") from None
        return out["state"], out["meta"]

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        try:
            self.wait()
        finally:
            self.manager.close()
