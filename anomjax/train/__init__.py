"""The one training engine shared by every method that learns weights (``kind = "train"``).

What a method must provide is code, not prose: :class:`anomjax.methods.protocol.TrainedMethod`
(``init``, ``optimizer``, ``loss``, ``score``, and the optional hooks ``calibrate``,
``frozen_features``, ``host_inputs``, ``train_state_sharding`` with their defaults and
shapes) and :mod:`anomjax.methods.optimization` (several parameter groups in phases:
``GroupedOptimizer``, ``Phase``, ``Update``). This package executes them.

Entry points::

    state = train_method(method, key, train_split, *, epochs, batch_size, run_dir=None,
                         resume=False, ...)           # -> the trained method State

``train_method`` owns everything else: the jitted, buffer-donating
``train_step(train_state, images, key, frozen=None, host=None) -> (train_state, metrics)``
(``make_train_step``), the
``TrainState`` pytree (params, opt_state, batch_stats, step, key), data parallelism over a
``jax.sharding.Mesh`` of all devices (batch sharded, params replicated; each process reads
only its own shard of the data), Orbax checkpoints in ``run_dir/checkpoints`` (every epoch,
last ``keep`` kept, at the end), resume from the latest checkpoint (refused when the batch
layout, seed, process count or method hyper-parameters differ, naming the fields), a
divergence stop that checks the loss, the gradient norm and the *updated* state of every
step before anything is checkpointed (so the kept checkpoint is finite), metrics fetched
from the device every ``log_every`` steps (no host synchronisation per step; every step
is still logged), a tqdm bar, ``run_dir/metrics.jsonl`` and TensorBoard events in
``run_dir/tensorboard``, optional validation with :mod:`anomjax.metrics`, and a bfloat16
compute option (running BatchNorm statistics stay float32).

Multi-host: call ``jax.distributed.initialize()`` first (on CPU also
``jax.config.update("jax_cpu_collectives_implementation", "gloo")``;
:func:`initialize_from_env` does both from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID``, and ``anomjax fit --distributed`` calls it); ``batch_size`` stays
the global batch, each process loads ``batch_size / process_count`` images per step from its
own shard, and every process must pass the same arguments. ``method.init`` runs on every
process and process 0's result is broadcast to all (``multihost_utils.broadcast_one_to_all``).
"""

from anomjax.methods.optimization import GroupedOptimizer, Phase, Update
from anomjax.train.checkpoint_store import CheckpointStore
from anomjax.train.distributed import initialize_from_env
from anomjax.train.divergence import TrainingDiverged
from anomjax.train.loop import TrainPlan, epoch_seed, train_method, train_plan
from anomjax.train.settings import EngineSettings
from anomjax.train.sharding import DataMesh
from anomjax.train.state import TrainState, init_train_state, method_state
from anomjax.train.step import make_train_step

__all__ = [
    "CheckpointStore",
    "DataMesh",
    "EngineSettings",
    "GroupedOptimizer",
    "Phase",
    "TrainPlan",
    "TrainState",
    "TrainingDiverged",
    "Update",
    "epoch_seed",
    "initialize_from_env",
    "init_train_state",
    "make_train_step",
    "method_state",
    "train_method",
    "train_plan",
]
