"""The one training engine shared by every method that learns weights (``kind = "train"``).

What a ``kind = "train"`` method must provide (a frozen dataclass, ``@register``-ed)::

    name: ClassVar[str]; kind: ClassVar[str] = "train"

    def init(self, key, images) -> State
        # images: [B, H, W, 3] float32 in [0, 1] (one sample batch of training images), or,
        # when the class sets `init_on_all_images: ClassVar[bool] = True`, a re-iterable
        # (iterate it as often as needed) of every training image as numpy batches
        # [b, H, W, 3] float32, streamed from disk (never stacked in memory).
        # Returns a dict of arrays. Reserved keys:
        #   "params"       trainable pytree (the only thing the optimiser updates)
        #   "batch_stats"  optional: BatchNorm running statistics updated by `loss`
        # Every other key (e.g. "frozen" for teacher backbone variables, or normalisation
        # statistics) is carried unchanged through training and checkpointed with the rest.
        # May read weight files (not jitted).

    def loss(self, params, state, images, key) -> tuple[jax.Array, dict[str, jax.Array]]
        # Pure and jittable. params: the current trainable pytree; state: the full method
        # state (its "params" entry is stale, use the `params` argument; "batch_stats" is
        # current); images: [B, H, W, 3] float32 in [0, 1] (the global batch, sharded on B);
        # key: a fresh PRNG key for this step (fold_in(seed key, step)).
        # Returns the scalar loss (normally the mean over the batch; a paper that sums, like
        # STPM's code, may sum) and an aux dict of scalar metrics
        # to log; if aux has a "batch_stats" entry it replaces state["batch_stats"]
        # (it is not logged).

    def optimizer(self, total_steps: int) -> optax.GradientTransformation
        # Built from the method's config fields (e.g. SGD lr 0.4, momentum 0.9, wd 1e-4).
        # total_steps = epochs * steps_per_epoch of this run: a schedule that depends on it
        # makes "1 epoch, then resume to 2" differ from "2 epochs straight"; constant or
        # step-indexed schedules extend exactly.

    def score(self, state, images) -> Scores
        # Pure and jittable; see anomjax.scoring.to_scores.

    # Several parameter groups with their own optimisers and losses, in order, in phases:
    # optimizer() returns an anomjax.train.groups.GroupedOptimizer (see there); loss() is
    # then not used.

    # Optional:
    default_epochs: ClassVar[int]   # the paper's epochs, used when train_method gets epochs=None
    default_batch_size: ClassVar[int]  # the paper's batch size; the CLI default

    def calibrate(self, state, batches: Iterable[Batch]) -> State
        # Called once after the last epoch with the (unshuffled) training batches, e.g. to
        # store the mean/std of training-set scores used for normalisation at test time.

    def frozen_features(self, state, images) -> pytree of [B, ...] arrays
        # Jittable features of a frozen network that depend on the image alone (e.g. a
        # distillation teacher's). The engine computes them once per training image, keeps
        # them in host memory (up to train_method's frozen_cache_mb) and calls
        # loss(params, state, images, key, frozen=<this batch's features>), so the loss
        # skips the frozen forward pass; see anomjax.train.frozen_cache.

Entry points::

    state = train_method(method, key, train_split, *, epochs, batch_size, run_dir=None,
                         resume=False, ...)           # -> the trained method State

``train_method`` owns everything else: the jitted, buffer-donating
``train_step(train_state, images, key, frozen=None) -> (train_state, metrics)``
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

:mod:`anomjax.train.interceptors` runs a shared (frozen-BatchNorm) backbone module in
training mode (batch statistics, running statistics updated) for students trained from
scratch, and replaces depthwise convolutions by exact shifted sums, which XLA's CPU backend
runs several times faster.

Multi-host: call ``jax.distributed.initialize()`` first (on CPU also
``jax.config.update("jax_cpu_collectives_implementation", "gloo")``;
:func:`initialize_from_env` does both from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID``, and ``anomjax fit --distributed`` calls it); ``batch_size`` stays
the global batch, each process loads ``batch_size / process_count`` images per step from its
own shard, and every process must pass the same arguments. ``method.init`` runs on every
process and process 0's result is broadcast to all (``multihost_utils.broadcast_one_to_all``).
"""

from anomjax.train.checkpoint import CheckpointStore
from anomjax.train.distributed import initialize_from_env
from anomjax.train.divergence import TrainingDiverged
from anomjax.train.groups import GroupedOptimizer, Phase, Update
from anomjax.train.loop import epoch_seed, train_method
from anomjax.train.sharding import DataMesh
from anomjax.train.state import TrainState, init_train_state, method_state
from anomjax.train.step import make_train_step

__all__ = [
    "CheckpointStore",
    "DataMesh",
    "GroupedOptimizer",
    "Phase",
    "TrainState",
    "TrainingDiverged",
    "Update",
    "epoch_seed",
    "initialize_from_env",
    "init_train_state",
    "make_train_step",
    "method_state",
    "train_method",
]
