"""The error raised when training produces a non-finite loss."""

from __future__ import annotations


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept on disk."""

    def __init__(self, step: int, loss: float, last_checkpoint: int | None, run_dir: str | None):
        where = (f"the last good checkpoint (step {last_checkpoint}) is kept in {run_dir}"
                 if last_checkpoint is not None else "no checkpoint was written before it")
        super().__init__(
            f"training diverged: the loss is {loss} at step {step}; {where}. Lower the "
            "learning rate, check the input images, or resume from the checkpoint.")
        self.step = step
        self.loss = loss
        self.last_checkpoint = last_checkpoint
