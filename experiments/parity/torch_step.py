"""One reference optimiser step, returning the stepped parameters and the update itself.

A first Adam step moves a parameter whose gradient is below Adam's epsilon by far less than
the float32 spacing of the parameter, so ``stepped - weights`` read back from a float32
fixture is mostly rounding; the update (``stepped - before``, taken in the reference's own
precision) is stored on its own so that a parity test can compare it with the optimiser's
update at the gradient's precision.
"""

from __future__ import annotations

import numpy as np
import torch
from common import state, to_numpy


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(state after optimizer.step(), {parameter name: its update})`` (call after
    ``loss.backward()``)."""
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer.step()
    updates = {f"update/{k}": to_numpy(p.detach() - before[k])
               for k, p in model.named_parameters()}
    return state(model), updates
