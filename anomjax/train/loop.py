"""``train_method``: the epoch loop around the jitted step (data, checkpoints, logs)."""

from __future__ import annotations

import functools
import itertools
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from anomjax.methods.base import State
from anomjax.train.checkpoint import CheckpointStore
from anomjax.train.divergence import TrainingDiverged
from anomjax.train.metrics_log import MetricsLog
from anomjax.train.prefetch import prefetch
from anomjax.train.sharding import DataMesh
from anomjax.train.state import TrainState, init_train_state, method_state, raw_key
from anomjax.train.step import TrainStep, make_train_step


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of ``epoch``: a pure function of ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _run_keys(key: jax.Array) -> tuple[jax.Array, int, jax.Array]:
    """Split the user's key into (init key, data seed, per-step base key)."""
    key = raw_key(key)
    data_seed = int(jax.random.bits(jax.random.fold_in(key, 1), dtype=np.uint32))
    return jax.random.fold_in(key, 0), data_seed, jax.random.fold_in(key, 2)


@functools.lru_cache(maxsize=8)
def _compiled_step(method: Any, total_steps: int,
                   compute_dtype: str | None) -> tuple[Any, TrainStep]:
    """The method's optimiser and jitted step, reused across runs of the same configuration."""
    optimizer = method.optimizer(total_steps)
    return optimizer, make_train_step(method, optimizer, compute_dtype=compute_dtype)


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
                   num_workers: int) -> Iterator[np.ndarray]:
    """This process's image batches of ``epoch``, from batch ``skip`` to ``steps``."""
    batches = split.batches(batch_size=local_bs, shuffle=True, seed=epoch_seed(seed, epoch),
                            num_workers=num_workers, drop_remainder=True,
                            shard_index=jax.process_index(), num_shards=jax.process_count())
    got = skip
    for batch in itertools.islice(batches, skip, steps):
        got += 1
        yield np.asarray(batch.images, np.float32)
    if got < steps:
        raise RuntimeError(f"the training split gave {got} batches of {local_bs} images in "
                           f"epoch {epoch}, expected {steps} (len(split) = {len(split)}); its "
                           "batches() must honour drop_remainder and the shard arguments")


def _init_images(method: Any, split: Any, local_bs: int, n_train: int,
                 num_workers: int) -> np.ndarray:
    """The images ``method.init`` gets: the first batch of ``split`` (in dataset order), or
    every training image, on every process, for a method whose class sets
    ``init_on_all_images = True`` (e.g. to pretrain a teacher on all of them)."""
    if getattr(method, "init_on_all_images", False):
        return np.concatenate([np.asarray(b.images, np.float32) for b in split.batches(
            batch_size=local_bs, num_workers=num_workers)])
    sample = next(iter(split.batches(batch_size=min(local_bs, n_train), num_workers=0)))
    return np.asarray(sample.images, np.float32)


def _validate(method: Any, state: State, split: Any, batch_size: int, mesh: DataMesh,
              num_workers: int) -> dict[str, float]:
    """Shared metrics of ``method`` on ``split`` (scored replicated on every device)."""
    from anomjax.metrics import compute_metrics

    score = jax.jit(method.score)
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


def train_method(method: Any, key: jax.Array, train_split: Any, *, epochs: int | None,
                 batch_size: int, run_dir: str | Path | None = None, resume: bool = False,
                 keep: int = 3, checkpoint_every: int | None = None,
                 val_split: Any = None, val_every: int | None = None,
                 compute_dtype: str | None = None, num_workers: int = 4,
                 devices: list[Any] | None = None, disable: bool = False) -> State:
    """Train a ``kind="train"`` method on ``train_split`` and return its trained state.

    Args:
      method: a method with ``init``/``loss``/``optimizer``/``score`` (see ``anomjax.train``).
      key: PRNG key; it fixes the initialisation, the shuffling of every epoch (a pure
        function of ``(seed, epoch)``) and every step's key (``fold_in(seed key, step)``).
      train_split: a data split (``len``, ``batches(...)``) of defect-free images.
      epochs: total epochs of the run (a resumed run continues up to this number); ``None``
        takes the method's ``default_epochs`` (its paper's), if it declares one.
      batch_size: global batch size over all devices and processes (incomplete last batches
        of an epoch are dropped, so every step has the same shape).
      run_dir: where checkpoints (``checkpoints/``), ``metrics.jsonl`` and ``tensorboard/``
        go; ``None`` trains in memory without any of them.
      resume: continue from the latest checkpoint in ``run_dir`` (none -> start fresh).
      keep: how many checkpoints to keep.
      checkpoint_every: also checkpoint every this many steps (besides every epoch end).
      val_split, val_every: score ``val_split`` with the shared metrics every ``val_every``
        steps (and log them under ``val/``).
      compute_dtype: ``"bfloat16"`` to run the loss in bfloat16 (float32 master params).
      num_workers: image-loading workers of the data pipeline.
      devices: the devices to train on (default: all devices of all processes).
      disable: turn the progress bar off.
    """
    if epochs is None:
        epochs = getattr(method, "default_epochs", None)
        if epochs is None:
            raise ValueError(f"{getattr(method, 'name', method)} has no default number of "
                             "epochs; give one (epochs=N, or --epochs N on the command line)")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir to read checkpoints from")
    mesh = DataMesh(devices)
    n_train = len(train_split)
    if n_train == 0:
        raise ValueError("the training split is empty")
    global_bs = _global_batch_size(batch_size, n_train, mesh)
    local_bs = mesh.local_batch_size(global_bs)
    steps_per_epoch = (n_train // jax.process_count()) // local_bs
    keys = _run_keys(key)
    store = CheckpointStore(run_dir, keep) if run_dir is not None else None
    try:
        ts = _train_loop(method, train_split, store, run_dir=run_dir, resume=resume,
                         epochs=epochs, steps_per_epoch=steps_per_epoch, global_bs=global_bs,
                         local_bs=local_bs, n_train=n_train, mesh=mesh, keys=keys,
                         checkpoint_every=checkpoint_every, val_split=val_split,
                         val_every=val_every, compute_dtype=compute_dtype,
                         num_workers=num_workers, disable=disable)
    finally:
        if store is not None:
            store.close()

    state = method_state(ts)
    if hasattr(method, "calibrate"):
        state = method.calibrate(state, train_split.batches(batch_size=global_bs,
                                                            num_workers=num_workers))
    return state


def _train_loop(method: Any, train_split: Any, store: CheckpointStore | None, *,
                run_dir: str | Path | None, resume: bool, epochs: int, steps_per_epoch: int,
                global_bs: int, local_bs: int, n_train: int, mesh: DataMesh,
                keys: tuple[jax.Array, int, jax.Array], checkpoint_every: int | None,
                val_split: Any, val_every: int | None, compute_dtype: str | None,
                num_workers: int, disable: bool) -> TrainState:
    """Initialise or restore the train state, run the remaining steps, return the last."""
    init_key, data_seed, step_key = keys
    total_steps = epochs * steps_per_epoch
    if store is not None and not resume and store.latest_step() is not None:
        raise ValueError(f"{store.directory} already holds checkpoints (latest step "
                         f"{store.latest_step()}); resume them (resume=True, --resume) or "
                         "train into another run folder")

    optimizer, step_fn = _compiled_step(method, total_steps, compute_dtype)
    ts = init_train_state(method.init(init_key, _init_images(method, train_split, local_bs,
                                                             n_train, num_workers)),
                          optimizer, step_key)
    ts = mesh.replicate(ts)
    meta = {"global_batch_size": global_bs, "steps_per_epoch": steps_per_epoch,
            "data_seed": data_seed, "method": getattr(method, "name", type(method).__name__)}

    start = 0
    if resume and store.latest_step() is not None:
        ts, saved = store.restore(store.latest_step(), ts)
        _check_layout(saved, meta, store)
        start = int(jax.device_get(ts.step))
        if start > total_steps:
            warnings.warn(f"the checkpoint in {store.directory} is at step {start}, past the "
                          f"{total_steps} steps of {epochs} epochs; returning it as it is",
                          stacklevel=2)
    log = MetricsLog(run_dir, resume_step=start if resume else None,
                     enabled=jax.process_index() == 0)
    last_saved = start if (resume and start > 0) else None

    def checkpoint(ts: TrainState) -> None:
        nonlocal last_saved
        if store is not None:
            last_saved = store.save(ts, meta)

    bar = tqdm(total=total_steps, initial=start, desc=f"train {meta['method']}", unit="step",
               disable=disable or jax.process_index() != 0)
    try:
        step = start
        for epoch in range(start // steps_per_epoch, epochs):
            skip = step - epoch * steps_per_epoch
            tick = time.perf_counter()
            batches = _epoch_batches(train_split, local_bs, data_seed, epoch, skip,
                                     steps_per_epoch, num_workers)
            for images in prefetch(batches, mesh.shard_batch):
                ts, metrics = step_fn(ts, images, jax.random.fold_in(ts.key, step))
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                step += 1
                if not math.isfinite(metrics["loss"]):
                    raise TrainingDiverged(step, metrics["loss"], last_saved,
                                           None if run_dir is None else str(run_dir))
                now = time.perf_counter()
                metrics["images_per_s"] = global_bs / max(now - tick, 1e-9)
                metrics["epoch"] = epoch
                tick = now
                log.write(step, metrics)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4g}",
                                img_s=f"{metrics['images_per_s']:.1f}")
                if checkpoint_every and step % checkpoint_every == 0:
                    checkpoint(ts)
                if val_split is not None and val_every and step % val_every == 0:
                    log.write(step, _validate(method, method_state(ts), val_split, global_bs,
                                              mesh, num_workers), prefix="val")
            checkpoint(ts)
    finally:
        bar.close()
        log.close()
    return ts


def _check_layout(saved: dict[str, Any], current: dict[str, Any],
                  store: CheckpointStore) -> None:
    """Refuse to resume a checkpoint written with another batch layout or seed."""
    for name in ("global_batch_size", "steps_per_epoch", "data_seed", "method"):
        if saved.get(name) != current[name]:
            raise ValueError(
                f"cannot resume from {store.directory}: it was written with {name}="
                f"{saved.get(name)!r} but this run has {name}={current[name]!r}; use the same "
                "method, key and batch size, or another run folder")
