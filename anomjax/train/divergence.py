"""The error raised when a training step produces a non-finite loss, gradient or state."""

from __future__ import annotations

import math


class TrainingDiverged(FloatingPointError):
    """A step's loss, gradient or updated state became NaN or infinite.

    Every checkpoint is written only after all steps up to it were checked finite, so the
    last checkpoint named here is good: resuming it with a lower learning rate
    (``allow_config_change=True``, ``--resume --allow-config-change``) continues from
    finite weights and statistics.
    """

    def __init__(self, step: int, loss: float, last_checkpoint: int | None,
                 run_dir: str | None, grad_norm: float | None = None):
        if not math.isfinite(loss):
            what = f"the loss is {loss} at step {step}"
        elif grad_norm is not None and not math.isfinite(grad_norm):
            what = f"the gradient norm is {grad_norm} at step {step} (loss {loss:.4g})"
        else:
            what = (f"step {step} made the parameters, optimiser state or BatchNorm "
                    f"statistics non-finite (loss {loss:.4g})")
        where = (f"the last good checkpoint (step {last_checkpoint}) is kept in {run_dir}"
                 if last_checkpoint is not None and run_dir is not None
                 else "no good checkpoint is kept")
        advice = (" Lower the learning rate and resume from it (--resume "
                  "--allow-config-change --set learning_rate=...), check the input images, "
                  "or train again into a new run folder." if last_checkpoint is not None
                  else " Lower the learning rate or check the input images.")
        super().__init__(f"training diverged: {what}; {where}.{advice}")
        self.step = step
        self.loss = loss
        self.last_checkpoint = last_checkpoint
