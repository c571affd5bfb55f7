"""``train_method``: the epoch loop around the jitted step (data, checkpoints, logs)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from anomjax.methods.base import method_config
from anomjax.methods.optimization import GroupedOptimizer
from anomjax.methods.protocol import TrainedMethod, overrides
from anomjax.train.checkpoint_store import CheckpointStore
from anomjax.train.divergence import TrainingDiverged
from anomjax.train.frozen_cache import FrozenCache, build_frozen_cache, cached_feature_shapes
from anomjax.train.host_draws import draw_step
from anomjax.train.metrics_log import MetricsLog
from anomjax.train.prefetch import prefetch
from anomjax.train.sharding import DataMesh
from anomjax.train.state import TrainState, init_train_state, method_state, raw_key
from anomjax.train.step import TrainStep, make_train_step
from anomjax.types import State


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of ``epoch``: a pure function of ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _run_keys(key: jax.Array) -> tuple[jax.Array, int, jax.Array]:
    """Split the user's key into (init key, data seed, per-step base key)."""
    key = raw_key(key)
    data_seed = int(jax.random.bits(jax.random.fold_in(key, 1), dtype=np.uint32))
    return jax.random.fold_in(key, 0), data_seed, jax.random.fold_in(key, 2)


def train_state_sharding(method: Any, mesh: DataMesh) -> Any:
    """The train state's sharding (a prefix of its pytree): the method's own
    ``train_state_sharding(mesh)`` where it declares one (a population with its member axis
    split over the devices), else replicated on every device."""
    declared = method.train_state_sharding(mesh.mesh)
    return mesh.replicated if declared is None else TrainState(**declared)


@functools.lru_cache(maxsize=8)
def _compiled_step(method: Any, updates: int, compute_dtype: str | None, mesh: DataMesh,
                   accumulate: int = 1) -> tuple[Any, TrainStep]:
    """The method's optimiser (built for ``updates`` optimiser updates; with ``accumulate``
    > 1 wrapped in ``optax.MultiSteps``, which updates every ``accumulate`` batches with
    their mean gradient) and the jitted step, reused across runs of the same configuration."""
    optimizer = run_optimizer(method, updates, accumulate)
    return optimizer, make_train_step(method, optimizer, compute_dtype=compute_dtype,
                                      replicated=mesh.replicated,
                                      state_sharding=train_state_sharding(method, mesh))


def run_optimizer(method: Any, updates: int, accumulate: int = 1) -> Any:
    """``method.optimizer(updates)``, wrapped in ``optax.MultiSteps`` when ``accumulate`` > 1
    (one update every ``accumulate`` batches, with their mean gradient)."""
    optimizer = method.optimizer(updates)
    if accumulate == 1:
        return optimizer
    if isinstance(optimizer, GroupedOptimizer):
        raise ValueError(f"{method.name}: gradient accumulation does not apply to parameter "
                         "groups (GroupedOptimizer); use a larger batch")
    return optax.MultiSteps(optimizer, every_k_schedule=accumulate).gradient_transformation()


@functools.lru_cache(maxsize=8)
def _jitted_score(method: Any) -> Any:
    """``jax.jit(method.score)``, compiled once per method rather than at every validation."""
    return jax.jit(method.score)


def _global_batch_size(requested: int, n_train: int, mesh: DataMesh) -> int:
    """``requested``, or the largest multiple of the device count that fits the data."""
    if requested < 1:
        raise ValueError(f"batch_size must be positive, got {requested}")
    per_shard = n_train // jax.process_count()
    if per_shard * jax.process_count() >= requested:
        return requested
    fit = (n_train // mesh.num_devices) * mesh.num_devices
    if fit == 0:
        raise ValueError(f"the training split has {n_train} images, fewer than the "
                         f"{mesh.num_devices} devices; cannot form a batch")
    warnings.warn(f"batch_size {requested} exceeds the {n_train} training images; "
                  f"training with batch_size {fit}", stacklevel=3)
    return fit


def _epoch_batches(split: Any, local_bs: int, seed: int, epoch: int, skip: int, steps: int,
                   num_workers: int, first_step: int
                   ) -> Iterator[tuple[int, np.ndarray, tuple[str, ...]]]:
    """This process's batches of ``epoch`` from batch ``skip`` to ``steps``: each one's run
    step (``first_step``: the epoch's first), images and paths."""
    batches = split.batches(batch_size=local_bs, shuffle=True, seed=epoch_seed(seed, epoch),
                            num_workers=num_workers, drop_remainder=True,
                            shard_index=jax.process_index(), num_shards=jax.process_count())
    got = skip
    for batch in itertools.islice(batches, skip, steps):
        yield first_step + got, np.asarray(batch.images, np.float32), tuple(batch.paths)
        got += 1
    if got < steps:
        raise RuntimeError(f"the training split gave {got} batches of {local_bs} images in "
                           f"epoch {epoch}, expected {steps} (len(split) = {len(split)}); its "
                           "batches() must honour drop_remainder and the shard arguments")


class ImageBatches:
    """Every training image as ``[b, H, W, 3]`` float32 numpy batches, in dataset order.

    Re-iterable: each ``iter()`` reads the split again from disk, so a method can make several
    passes (e.g. sample fresh crops per teacher step) without all images in memory at once.
    """

    def __init__(self, split: Any, batch_size: int, num_workers: int):
        self.split, self.batch_size, self.num_workers = split, batch_size, num_workers

    def __len__(self) -> int:
        """Number of batches of one pass."""
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.split.batches(batch_size=self.batch_size,
                                        num_workers=self.num_workers):
            yield np.asarray(batch.images, np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """``np.asarray(batches)``: every image stacked ``[N, H, W, 3]`` (all in memory; for
        methods written against the older contract that received one stacked array)."""
        stacked = np.concatenate(list(self))
        return stacked if dtype is None else stacked.astype(dtype)


def _init_images(method: Any, split: Any, local_bs: int, n_train: int,
                 num_workers: int) -> np.ndarray | ImageBatches:
    """The images ``method.init`` gets: the first batch of ``split`` (in dataset order,
    ``[b, H, W, 3]``), or, for a method whose class sets ``init_on_all_images = True`` (e.g. to
    pretrain a teacher on all of them), every training image streamed as a re-iterable of
    batches (:class:`ImageBatches`)."""
    if method.init_on_all_images:
        return ImageBatches(split, local_bs, num_workers)
    sample = next(iter(split.batches(batch_size=min(local_bs, n_train), num_workers=0)))
    return np.asarray(sample.images, np.float32)


def _image_size(images: np.ndarray | ImageBatches) -> tuple[int, int]:
    """``(H, W)`` of the training images, from what ``method.init`` gets."""
    first = images if isinstance(images, np.ndarray) else next(iter(images))
    return int(first.shape[1]), int(first.shape[2])


def _initial_state(method: Any, init_key: jax.Array, images: Any) -> State:
    """``method.init``, identical on every process: process 0's result is broadcast to all
    (each host's own result only fixes the structure), so host-to-host nondeterminism (other
    GPUs, atomics, thread timing) can never give "replicated" arrays that differ."""
    state = method.init(init_key, images)
    if jax.process_count() == 1:
        return state
    return multihost_utils.broadcast_one_to_all(jax.device_get(state))


def _validate(method: Any, state: State, split: Any, batch_size: int, mesh: DataMesh,
              num_workers: int) -> dict[str, float]:
    """Shared metrics of ``method`` on ``split`` (scored replicated on every device)."""
    from anomjax.metrics import compute_metrics

    score = _jitted_score(method)
    if overrides(method, "calibrate_test"):  # a normaliser taken over the split itself
        state = method.calibrate_test(state, split.batches(batch_size=batch_size,
                                                           num_workers=num_workers))
    images, labels, maps, masks = [], [], [], []
    for batch in split.batches(batch_size=batch_size, num_workers=num_workers):
        out = score(state, mesh.replicate(np.asarray(batch.images, np.float32)))
        images.append(np.asarray(out.image))
        maps.append(np.asarray(out.maps))
        labels.append(np.asarray(batch.labels))
        masks.append(np.asarray(batch.masks))
    metrics = compute_metrics(np.concatenate(images), np.concatenate(labels),
                              np.concatenate(maps), np.concatenate(masks))
    return {k: float(v) for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """How long a run trains, in engine steps (batches) and optimiser updates.

    Attributes:
      global_batch_size: images per step over all devices and processes.
      steps_per_epoch: full batches of one pass over the training split.
      total_steps: engine steps (batches) of the whole run.
      epochs: passes started (the last one may stop part-way when the budget is in steps).
      accumulate: batches per optimiser update (gradient accumulation; 1: none).
    """

    global_batch_size: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    accumulate: int = 1

    @property
    def optimizer_steps(self) -> int:
        """Optimiser updates of the whole run (the budget ``steps`` counts these)."""
        return self.total_steps // self.accumulate

    @property
    def images_seen(self) -> int:
        """Training images the optimiser saw over the whole run."""
        return self.total_steps * self.global_batch_size


def train_plan(method: Any, n_train: int, batch_size: int, *, epochs: int | None = None,
               steps: int | None = None, devices: list[Any] | None = None,
               accumulate: int = 1) -> TrainPlan:
    """The run's budget: ``steps`` optimiser updates (of ``accumulate`` batches each), or
    ``epochs`` passes over ``n_train`` images (neither: the method's ``default_epochs``);
    ``batch_size`` is the global batch (lowered to a multiple of the devices that fits the
    data, with a warning)."""
    if epochs is not None and steps is not None:
        raise ValueError(f"give the budget as epochs ({epochs}) or as steps ({steps}), not both")
    for name, value in (("epochs", epochs), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if epochs is None and steps is None:
        epochs = method.default_epochs
        if epochs is None:
            raise ValueError(f"{method.name} has no default number of epochs; give a budget "
                             "(epochs=N or steps=N; --epochs N or --steps N on the command "
                             "line)")
    if n_train == 0:
        raise ValueError("the training split is empty")
    mesh = DataMesh(devices)
    global_bs = _global_batch_size(batch_size, n_train, mesh)
    steps_per_epoch = (n_train // jax.process_count()) // mesh.local_batch_size(global_bs)
    total = steps * accumulate if steps is not None else epochs * steps_per_epoch
    return TrainPlan(global_batch_size=global_bs, steps_per_epoch=steps_per_epoch,
                     total_steps=total, epochs=-(-total // steps_per_epoch),
                     accumulate=accumulate)


def train_method(method: Any, key: jax.Array, train_split: Any, *, epochs: int | None,
                 batch_size: int, steps: int | None = None,
                 run_dir: str | Path | None = None, resume: bool = False,
                 allow_config_change: bool = False, keep: int = 3,
                 checkpoint_every: int | None = None, log_every: int = 10,
                 val_split: Any = None, val_every: int | None = None,
                 val_steps: Sequence[int] = (),
                 compute_dtype: str | None = None, num_workers: int = 4,
                 frozen_cache_mb: float = 2048.0, accumulate: int = 1,
                 profile_steps: tuple[int, int] | None = None,
                 devices: list[Any] | None = None, disable: bool = False) -> State:
    """Train a ``kind="train"`` method on ``train_split`` and return its trained state.

    Args:
      method: a method with ``init``/``loss``/``optimizer``/``score`` (see ``anomjax.train``).
      key: PRNG key; it fixes the initialisation, the shuffling of every epoch (a pure
        function of ``(seed, epoch)``), every step's key (``fold_in(seed key, step)``) and,
        for a method with ``host_inputs``, every step's host draw (a pure function of
        ``(seed, step)``, :mod:`anomjax.train.host_draws`), so a resumed run repeats them.
      train_split: a data split (``len``, ``batches(...)``) of defect-free images.
      epochs: total epochs of the run (a resumed run continues up to this number); ``None``
        with ``steps`` also ``None`` takes the method's ``default_epochs`` (its paper's).
      steps: the budget in optimiser steps instead of epochs (the last epoch stops part-way).
        A resumed run continues up to its budget; a budget that moves the optimiser's
        schedule or phases (defined on the run's total steps, recorded in every checkpoint)
        is refused unless ``allow_config_change``.
      batch_size: global batch size over all devices and processes (incomplete last batches
        of an epoch are dropped, so every step has the same shape).
      run_dir: where checkpoints (``checkpoints/``), ``metrics.jsonl`` and ``tensorboard/``
        go; ``None`` trains in memory without any of them.
      resume: continue from the latest checkpoint in ``run_dir`` (none -> start fresh). The
        checkpoint must have been written with the same batch layout, seed, process count and
        method hyper-parameters; a mismatch is refused, naming the fields.
      allow_config_change: on resume, accept changed method hyper-parameters (with a
        warning), e.g. a lower learning rate after a divergence; the layout must still match.
      keep: how many checkpoints to keep.
      checkpoint_every: also checkpoint every this many steps (besides every epoch end).
      log_every: fetch the step metrics from the device every this many steps (and before
        every checkpoint and validation) instead of at every step, so the host never waits
        for a step to finish before queueing the next. Every step is still logged with its
        own metrics, and a divergence names the exact step; ``images_per_s`` is the mean
        throughput of the fetched window.
      val_split, val_every, val_steps: score ``val_split`` with the shared metrics every
        ``val_every`` steps and at each of ``val_steps`` (``0``: the initial state, before the
        first step), and log them under ``val/`` with the step. The state scored is the one
        the run would return at that step (calibrated, for a method with ``calibrate``).
      compute_dtype: ``"bfloat16"`` to run the loss in bfloat16 (float32 master params).
      num_workers: image-loading workers of the data pipeline.
      frozen_cache_mb: for a method that declares ``frozen_features`` (see
        :mod:`anomjax.train.frozen_cache`), compute them once per training image and keep
        them in host memory if they take at most this many MiB (0: compute them at every
        step).
      accumulate: average the gradients of this many batches per optimiser update
        (``optax.MultiSteps``); ``steps`` then counts updates. Not with parameter groups.
      profile_steps: ``(a, b)``: a ``jax.profiler`` trace of steps ``a + 1 .. b`` on process 0
        into ``run_dir/profile``.
      devices: the devices to train on (default: all devices of all processes).
      disable: turn the progress bar off.

    Raises:
      TrainingDiverged: a step gave a non-finite loss, gradient or updated state; the last
        checkpoint (written only after every step up to it was checked finite) is kept.
    """
    if not isinstance(method, TrainedMethod):
        raise TypeError(f"train_method needs a TrainedMethod (anomjax.methods.protocol), got "
                        f"{type(method).__name__}")
    if log_every < 1:
        raise ValueError(f"log_every must be at least 1, got {log_every}")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir to read checkpoints from")
    mesh = DataMesh(devices)
    n_train = len(train_split)
    plan = train_plan(method, n_train, batch_size, epochs=epochs, steps=steps, devices=devices,
                      accumulate=accumulate)
    global_bs = plan.global_batch_size
    local_bs = mesh.local_batch_size(global_bs)
    keys = _run_keys(key)
    store = CheckpointStore(run_dir, keep) if run_dir is not None else None
    try:
        ts = _train_loop(method, train_split, store, run_dir=run_dir, resume=resume,
                         allow_config_change=allow_config_change, plan=plan,
                         global_bs=global_bs,
                         local_bs=local_bs, n_train=n_train, mesh=mesh, keys=keys,
                         checkpoint_every=checkpoint_every, log_every=log_every,
                         val_split=val_split, val_every=val_every,
                         val_steps=frozenset(val_steps), profile_steps=profile_steps,
                         compute_dtype=compute_dtype, num_workers=num_workers,
                         frozen_cache_mb=frozen_cache_mb, disable=disable)
    finally:
        if store is not None:
            store.close()

    state = method_state(ts)
    return method.calibrate(state, train_split.batches(batch_size=global_bs,
                                                       num_workers=num_workers))


class _MetricsWindow:
    """Step metrics kept on the device until :meth:`flush` fetches them all at once.

    Each step's arrays start their device-to-host copy at once (``copy_to_host_async``), so
    a flush rarely waits. A flush checks every step in order and raises
    :class:`TrainingDiverged` at the first one whose loss, gradient or updated state was not
    finite, after logging the good steps before it.
    """

    def __init__(self, log: MetricsLog, bar: Any, global_bs: int, run_dir: str | None,
                 store: CheckpointStore | None):
        self.log, self.bar, self.global_bs, self.run_dir = log, bar, global_bs, run_dir
        self.store = store
        self.pending: list[tuple[int, int, dict[str, jax.Array]]] = []
        self.tick = time.perf_counter()
        self.last_saved: int | None = None

    def add(self, step: int, epoch: int, metrics: dict[str, jax.Array]) -> None:
        for value in metrics.values():
            value.copy_to_host_async()
        self.pending.append((step, epoch, metrics))

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        fetched = jax.device_get([metrics for _, _, metrics in pending])
        now = time.perf_counter()
        rate = self.global_bs * len(pending) / max(now - self.tick, 1e-9)
        self.tick = now
        for (step, epoch, _), values in zip(pending, fetched, strict=True):
            values = {k: float(v) for k, v in values.items()}
            finite = values.pop("finite") == 1.0
            if not (finite and math.isfinite(values["loss"])):
                self._drop_bad_checkpoint(step, values["loss"])
                raise TrainingDiverged(step, values["loss"], self.last_saved, self.run_dir,
                                       grad_norm=values.get("grad_norm", math.nan))
            self.log.write(step, {**values, "images_per_s": rate, "epoch": epoch})
            self.bar.update(1)
        # Several losses (e.g. a GAN's generator and discriminator) are shown side by side.
        parts = {k.removeprefix("loss_"): f"{v:.4g}" for k, v in values.items()
                 if k.startswith("loss_") and not k.startswith("loss_member")}
        self.bar.set_postfix(loss=f"{values['loss']:.4g}", **dict(list(parts.items())[:3]),
                             img_s=f"{rate:.1f}")

    def _drop_bad_checkpoint(self, step: int, loss: float) -> None:
        """A non-finite loss at ``step`` was computed from the weights of ``step - 1``: if that
        state is the last checkpoint, it is not good, so delete it and fall back to the one
        before (a finite update with an infinite gradient leaves the checkpoint good)."""
        if math.isfinite(loss) or self.store is None or self.last_saved != step - 1:
            return
        self.store.delete(step - 1)
        self.last_saved = self.store.latest_step()


def _train_loop(method: Any, train_split: Any, store: CheckpointStore | None, *,
                run_dir: str | Path | None, resume: bool, allow_config_change: bool,
                plan: TrainPlan, global_bs: int, local_bs: int,
                n_train: int, mesh: DataMesh, keys: tuple[jax.Array, int, jax.Array],
                checkpoint_every: int | None, log_every: int, val_split: Any,
                val_every: int | None, val_steps: frozenset[int],
                profile_steps: tuple[int, int] | None,
                compute_dtype: str | None, num_workers: int,
                frozen_cache_mb: float, disable: bool) -> TrainState:
    """Initialise or restore the train state, run the remaining steps, return the last."""
    init_key, data_seed, step_key = keys
    total_steps, steps_per_epoch = plan.total_steps, plan.steps_per_epoch
    if store is not None and not resume and store.latest_step() is not None:
        raise ValueError(f"{store.directory} already holds checkpoints (latest step "
                         f"{store.latest_step()}); resume them (resume=True, --resume) or "
                         "train into another run folder")

    optimizer, step_fn = _compiled_step(method, plan.optimizer_steps, compute_dtype, mesh,
                                        plan.accumulate)
    images = _init_images(method, train_split, local_bs, n_train, num_workers)
    initial = _initial_state(method, init_key, images)
    ts = init_train_state(initial, optimizer, step_key)
    ts = mesh.place(ts, train_state_sharding(method, mesh))
    meta = {"global_batch_size": global_bs, "steps_per_epoch": steps_per_epoch,
            "data_seed": data_seed, "process_count": jax.process_count(),
            "method": method.name, "method_config": method_config(method)["params"],
            "total_steps": total_steps, "accumulate": plan.accumulate}

    start = 0
    if resume and store.latest_step() is not None:
        ts, saved = store.restore(store.latest_step(), ts)
        check_resume(saved, meta, str(store.directory), allow_config_change)
        start = int(jax.device_get(ts.step))
        check_schedule(method, saved.get("total_steps"), total_steps, plan.accumulate, ts,
                       str(store.directory), allow_config_change)
        if start > total_steps:
            warnings.warn(f"the checkpoint in {store.directory} is at step {start}, past the "
                          f"run's {total_steps} steps; returning it as it is", stacklevel=2)
    cache: FrozenCache | None = None
    cacheable = not isinstance(optimizer, GroupedOptimizer)
    host = method.host_inputs(_image_size(images)) if start < total_steps else None
    compiling = None
    if start < total_steps and jax.process_count() == 1 and isinstance(images, np.ndarray):
        frozen_shapes = (cached_feature_shapes(method, initial, (local_bs, *images.shape[1:]),
                                               n_train, frozen_cache_mb) if cacheable else None)
        host_shapes = None if host is None else draw_step(host, data_seed, start, global_bs)
        compiling = _compile_ahead(step_fn, ts, jax.random.fold_in(ts.key, start),
                                   (global_bs, *images.shape[1:]), (frozen_shapes, host_shapes),
                                   mesh)
    if start < total_steps and cacheable:
        cache = build_frozen_cache(method, initial, train_split, local_bs,
                                   limit_mb=frozen_cache_mb, num_workers=num_workers,
                                   disable=disable or jax.process_index() != 0)
    if compiling is not None:
        compiling.result()  # a compilation error is raised here, as the first step would
    del initial, images

    def place(item: tuple[int, np.ndarray, tuple[str, ...]]) -> tuple[jax.Array, Any, Any]:
        """A step's images, their cached frozen features and its host inputs, sharded on the
        mesh."""
        index, batch_images, paths = item
        frozen = None if cache is None else jax.tree.map(mesh.shard_batch, cache.lookup(paths))
        drawn = None if host is None else jax.tree.map(
            mesh.shard_batch, draw_step(host, data_seed, index, global_bs))
        return mesh.shard_batch(batch_images), frozen, drawn

    log = MetricsLog(run_dir, resume_step=start if resume else None,
                     enabled=jax.process_index() == 0)
    bar = tqdm(total=total_steps, initial=start, desc=f"train {meta['method']}", unit="step",
               disable=disable or jax.process_index() != 0)
    window = _MetricsWindow(log, bar, global_bs, None if run_dir is None else str(run_dir),
                            store)
    window.last_saved = start if (resume and start > 0) else None

    def checkpoint(ts: TrainState) -> None:
        window.flush()  # every step up to this one is checked finite before it is saved
        if store is not None:
            window.last_saved = store.save(ts, meta)
            window.tick = time.perf_counter()  # the throughput excludes checkpoint writes

    def validate(ts: TrainState, step: int) -> None:
        if val_split is None or not (step in val_steps or (val_every and step
                                                            and step % val_every == 0)):
            return
        window.flush()
        state = method_state(ts)
        if overrides(method, "calibrate"):
            state = method.calibrate(state, train_split.batches(batch_size=global_bs,
                                                                num_workers=num_workers))
        log.write(step, _validate(method, state, val_split, global_bs, mesh, num_workers),
                  prefix="val")
        window.tick = time.perf_counter()

    profiler = _Profiler(profile_steps, None if run_dir is None else Path(run_dir) / "profile")
    try:
        step = start
        if start == 0:
            validate(ts, 0)
        for epoch in range(start // steps_per_epoch, plan.epochs):
            skip = step - epoch * steps_per_epoch
            stop = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            batches = _epoch_batches(train_split, local_bs, data_seed, epoch, skip, stop,
                                     num_workers, epoch * steps_per_epoch)
            for images, frozen, drawn in prefetch(batches, place):
                profiler.before(step)
                ts, metrics = step_fn(ts, images, jax.random.fold_in(ts.key, step), frozen,
                                      drawn)
                step += 1
                profiler.after(step, metrics)
                window.add(step, epoch, metrics)
                if step % log_every == 0:
                    window.flush()
                if checkpoint_every and step % checkpoint_every == 0:
                    checkpoint(ts)
                validate(ts, step)
            checkpoint(ts)
        window.flush()
    finally:
        profiler.stop()
        bar.close()
        log.close()
    return ts


class _Profiler:
    """A ``jax.profiler`` trace of the steps ``a + 1 .. b`` (``window = (a, b)``) on process 0,
    written to ``out``; each step inside is annotated with its number."""

    def __init__(self, window: tuple[int, int] | None, out: Path | None):
        self.window = window if jax.process_index() == 0 else None
        if self.window is not None and out is None:
            raise ValueError("profile_steps needs a run folder to write the trace into")
        self.out, self.running, self.annotation = out, False, None

    def before(self, step: int) -> None:
        if self.window is None or not self.window[0] <= step < self.window[1]:
            return
        if not self.running:
            jax.profiler.start_trace(str(self.out))
            self.running = True
        self.annotation = jax.profiler.StepTraceAnnotation("train", step_num=step + 1)
        self.annotation.__enter__()

    def after(self, step: int, metrics: dict[str, jax.Array]) -> None:
        if self.annotation is not None:
            jax.block_until_ready(metrics)
            self.annotation.__exit__(None, None, None)
            self.annotation = None
        if self.running and step >= self.window[1]:
            self.stop()

    def stop(self) -> None:
        if self.running:
            jax.profiler.stop_trace()
            self.running = False


def _compile_ahead(step_fn: TrainStep, ts: TrainState, key: jax.Array,
                   batch_shape: tuple[int, ...], inputs: tuple[Any, Any],
                   mesh: DataMesh) -> Future:
    """Compile ``step_fn`` for batches ``batch_shape`` ``[B, H, W, 3]`` (and ``inputs``: the
    shapes of one batch's cached frozen features and host inputs, each ``None`` where there
    are none) in a background thread, so that XLA's compilation overlaps the frozen-feature
    pass; the first step then reuses the executable (same shapes and shardings as the real
    calls)."""
    images = jax.ShapeDtypeStruct(batch_shape, np.float32, sharding=mesh.batch_sharding)
    frozen, host = (None if shapes is None else jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((batch_shape[0], *s.shape[1:]), s.dtype,
                                       sharding=mesh.batch_sharding), shapes)
        for shapes in inputs)
    pool = ThreadPoolExecutor(1, "compile")
    compiled = pool.submit(lambda: step_fn.lower(ts, images, key, frozen, host).compile())
    pool.shutdown(wait=False)  # the thread ends with the compilation
    return compiled


_LAYOUT_FIELDS = ("global_batch_size", "steps_per_epoch", "data_seed", "process_count",
                  "method", "accumulate")


def check_resume(saved: dict[str, Any], current: dict[str, Any], where: str,
                 allow_config_change: bool = False) -> None:
    """Refuse to resume a checkpoint written with another layout, seed or configuration.

    ``saved`` and ``current`` are checkpoint ``meta`` records. A different batch layout, data
    seed, process count or method is always refused; different hyper-parameters are refused
    unless ``allow_config_change`` (then a warning names them). Every differing field is named.
    """
    layout = [f"{name}={saved.get(name)!r} (checkpoint) vs {current[name]!r} (this run)"
              for name in _LAYOUT_FIELDS if name in saved and saved[name] != current[name]]
    if layout:
        raise ValueError(f"cannot resume from {where}: it was written with another layout: "
                         f"{'; '.join(layout)}; use the same method, key, batch size and "
                         "number of processes, or another run folder")
    missing = [name for name in (*_LAYOUT_FIELDS, "method_config") if name not in saved]
    if missing:
        warnings.warn(f"the checkpoint in {where} does not record {', '.join(missing)} "
                      "(written by an older anomjax); those are not checked", stacklevel=3)
    old, new = saved.get("method_config", {}), current["method_config"]
    changed = [f"{name}={old.get(name)!r} (checkpoint) vs {new.get(name)!r} (this run)"
               for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    if not changed or "method_config" not in saved:
        return
    if not allow_config_change:
        raise ValueError(f"cannot resume from {where}: the method's hyper-parameters differ: "
                         f"{'; '.join(changed)}; use the same settings, or accept the change "
                         "explicitly (allow_config_change=True, --allow-config-change)")
    warnings.warn(f"resuming {where} with changed hyper-parameters: {'; '.join(changed)}",
                  stacklevel=3)


def check_schedule(method: Any, saved_total: int | None, total_steps: int, accumulate: int,
                   ts: TrainState, where: str, allow_config_change: bool = False) -> None:
    """Refuse to resume with a budget that changes what the optimiser does from here on.

    A method's optimiser is built from the run's length (a cosine decay, the phase boundaries
    of a :class:`GroupedOptimizer`); ``saved_total`` and ``total_steps`` count batches, of
    which ``accumulate`` make one update (the same accumulation is required to resume). The
    checkpoint records the budget it was written under; if the new budget moves a phase
    boundary or changes the next update (probed on the restored state with a gradient of
    ones), the resume is refused unless ``allow_config_change`` (then a warning says so). A
    budget that changes neither (a constant schedule, extended) resumes exactly.
    """
    if saved_total is None or saved_total == total_steps:
        return
    before = run_optimizer(method, saved_total // accumulate, accumulate)
    after = run_optimizer(method, total_steps // accumulate, accumulate)
    changes = []
    if isinstance(after, GroupedOptimizer):
        old_bounds = [p.until for p in before.phases]
        new_bounds = [p.until for p in after.phases]
        if old_bounds != new_bounds:
            changes.append(f"the phase boundaries move from steps {old_bounds} to {new_bounds}")
        pairs = [(before.optimizers[g], after.optimizers[g], ts.opt_state[g], ts.params[g])
                 for g in after.optimizers]
    else:
        pairs = [(before, after, ts.opt_state, ts.params)]
    for old, new, opt_state, params in pairs:
        grads = jax.tree.map(np.ones_like, jax.device_get(params))
        host_state, host_params = jax.device_get(opt_state), jax.device_get(params)
        a = jax.tree.leaves(old.update(grads, host_state, host_params)[0])
        b = jax.tree.leaves(new.update(grads, host_state, host_params)[0])
        if not all(np.allclose(x, y, rtol=1e-6, atol=0) for x, y in zip(a, b, strict=True)):
            changes.append("the learning-rate schedule gives another next update")
            break
    if not changes:
        return
    message = (f"cannot resume from {where} with a budget of {total_steps} steps: it was "
               f"written for {saved_total} steps, and the optimiser is defined on the run's "
               f"length ({'; '.join(changes)})")
    if not allow_config_change:
        raise ValueError(f"{message}; train with the same budget, or accept the change "
                         "explicitly (allow_config_change=True, --allow-config-change)")
    warnings.warn(message, stacklevel=3)
