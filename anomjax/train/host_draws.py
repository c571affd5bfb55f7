"""Per-batch inputs drawn on the host at every step (the hook
:meth:`anomjax.methods.protocol.TrainedMethod.host_inputs`).

A method whose loss needs more data than belongs in its train state (DRAEM's thousands of
anomaly-source textures) returns, from ``host_inputs(image_size)``, an object built once per
run that holds the data in host memory and draws each step's rows from it. Step ``s`` draws
with :func:`step_rng` ``(seed, s)``, a pure function of the run's data seed and the step, so a
resumed run draws exactly what an uninterrupted one does, and nothing of it is checkpointed.
Every process draws the same global batch and keeps its own rows (:func:`draw_step`), which
are then sharded on the batch axis like the images.
"""

from __future__ import annotations

import jax
import numpy as np

from anomjax.methods.protocol import HostInputs

#: Separates the host draws' seeds ``[seed, 1, step]`` from the epochs' shuffling seeds
#: ``[seed, epoch]`` (:func:`anomjax.train.loop.epoch_seed`).
HOST_STREAM = 1


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of step ``step``'s host draw: ``default_rng([seed, 1, step])``."""
    return np.random.default_rng([seed, HOST_STREAM, step])


def draw_step(inputs: HostInputs, seed: int, step: int,
              global_batch_size: int) -> dict[str, np.ndarray]:
    """This process's rows ``[B / process_count, ...]`` of step ``step``'s draw of the global
    batch ``B`` (every process draws the whole batch and keeps its slice, in process order,
    as :meth:`anomjax.train.sharding.DataMesh.shard_batch` assembles it)."""
    drawn = inputs.draw(step_rng(seed, step), global_batch_size)
    local = global_batch_size // jax.process_count()
    start = jax.process_index() * local
    out = {}
    for name, rows in drawn.items():
        rows = np.asarray(rows)
        if rows.shape[:1] != (global_batch_size,):
            raise ValueError(f"host input {name!r} has shape {rows.shape}; a draw of "
                             f"{global_batch_size} rows must have them on its first axis")
        out[name] = rows[start:start + local]
    return out
