"""The training engine on one device: determinism, resume, divergence, logs."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from groups_toy import ToyGroups
from train_toy import ArraySplit, ToyConvAE, toy_split

from anomjax.train import CheckpointStore, TrainingDiverged, epoch_seed, train_method
from anomjax.types import Scores


def _train(run_dir=None, **kw):
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 4)
    method = kw.pop("method", ToyConvAE())
    return train_method(method, jax.random.key(0), kw.pop("split", toy_split()),
                        run_dir=run_dir, num_workers=0, disable=True, **kw)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A straight 2-epoch run (8 steps of 4 images): its folder and final state."""
    run_dir = tmp_path_factory.mktemp("straight")
    return run_dir, _train(run_dir, epochs=2)


def test_training_lowers_the_loss_and_updates_batch_stats(straight):
    tmp_path, state = straight
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == list(range(1, 9))
    first, last = lines[0]["train/loss"], lines[-1]["train/loss"]
    assert last < 0.5 * first
    assert {"train/grad_norm", "train/mse", "train/images_per_s"} <= set(lines[0])
    assert np.all(np.asarray(state["batch_stats"]["mean"]) > 0.1)
    assert set(state) == {"params", "batch_stats", "frozen"}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert CheckpointStore(tmp_path).latest_step() == 8


def test_same_key_gives_bit_identical_params(straight):
    a, b = straight[1], _train()
    chex.assert_trees_all_equal(a, b)
    c = train_method(ToyConvAE(), jax.random.key(1), toy_split(), epochs=2, batch_size=4,
                     num_workers=0, disable=True)
    assert not np.array_equal(a["params"]["w"], c["params"]["w"])


def test_one_epoch_resumed_to_two_equals_two_straight(tmp_path, straight):
    _train(tmp_path / "resumed", epochs=1)
    resumed = _train(tmp_path / "resumed", epochs=2, resume=True)
    chex.assert_trees_all_equal(straight[1], resumed)
    steps = [json.loads(ln)["step"]
             for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_resume_drops_a_corrupt_metrics_line(tmp_path, straight):
    _train(tmp_path, epochs=1)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('epoch": 2.0}\n')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:5: dropping a corrupt metrics line"):
        resumed = _train(tmp_path, epochs=2, resume=True)
    chex.assert_trees_all_equal(straight[1], resumed)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if ln.startswith("{")]
    assert steps == list(range(1, 9))


def test_resume_with_another_batch_size_is_refused(tmp_path):
    _train(tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"global_batch_size=4 \(checkpoint\) vs 8 \(this run\)"):
        _train(tmp_path, epochs=2, batch_size=8, resume=True)


def test_resume_with_other_hyperparameters_is_refused_naming_them(tmp_path):
    _train(tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"hyper-parameters differ: lr=0.05 \(checkpoint\) vs "
                                         r"0.01 \(this run\); noise=0.05 \(checkpoint\) vs 0.1"):
        _train(tmp_path, epochs=2, method=ToyConvAE(lr=0.01, noise=0.1), resume=True)
    meta = json.loads(next((tmp_path / "checkpoints").glob("4/meta/*")).read_text())
    assert meta["process_count"] == 1
    assert meta["method_config"] == {"lr": 0.05, "noise": 0.05}


def test_training_again_into_a_used_run_dir_is_refused(straight):
    with pytest.raises(ValueError, match="already holds checkpoints .latest step 8.; resume"):
        _train(straight[0], epochs=2)


def test_keep_last_k_checkpoints(tmp_path):
    _train(tmp_path, epochs=2, checkpoint_every=1, keep=2)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [7, 8]


def test_nan_loss_stops_and_drops_the_checkpoint_it_was_computed_from(tmp_path):
    # lr 1e4: the loss of step 5 (computed from the epoch-end weights of step 4) is infinite,
    # so checkpoint 4 is not good and is deleted; nothing older exists.
    with pytest.raises(TrainingDiverged, match=r"the loss is (nan|inf) at step 5; no good "
                                               r"checkpoint is kept"):
        _train(tmp_path, epochs=20, method=ToyConvAE(lr=1e4))
    assert CheckpointStore(tmp_path).latest_step() is None
    good = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in good] == [1, 2, 3, 4]
    assert all(np.isfinite(ln["train/loss"]) for ln in good)


@dataclasses.dataclass(frozen=True)
class OverflowingStats(ToyConvAE):
    """A finite loss whose running statistic grows 1e20-fold per step: inf after step 2."""

    def init(self, key, images):
        state = super().init(key, images)
        return {**state, "batch_stats": {"mean": np.ones(3, np.float32)}}

    def loss(self, params, state, images, key):
        err, _ = super().loss(params, state, images, key)
        return err, {"batch_stats": {"mean": state["batch_stats"]["mean"] * 1e20}}


def _leaves_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_non_finite_updated_state_is_never_saved_as_last_good(tmp_path):
    """The loss stays finite; the guard must look at the state after the update."""
    with pytest.raises(TrainingDiverged, match=r"step 2 made the parameters, optimiser state "
                                               r"or BatchNorm statistics non-finite.*last good "
                                               r"checkpoint \(step 1\)"):
        _train(tmp_path, epochs=1, method=OverflowingStats(), checkpoint_every=1, log_every=3)
    store = CheckpointStore(tmp_path)
    assert store.latest_step() == 1
    like = jax.device_get(_init_state_like(OverflowingStats()))
    restored, _ = store.restore(1, like)
    assert _leaves_finite(restored)
    store.close()


def _init_state_like(method):
    from anomjax.train import init_train_state

    state = method.init(jax.random.key(0), toy_split().images[:4])
    return init_train_state(state, method.optimizer(4), jax.random.key(0))


def test_resume_after_divergence_with_a_lower_learning_rate_finishes(tmp_path):
    with pytest.raises(TrainingDiverged) as info:
        _train(tmp_path, epochs=20, method=ToyConvAE(lr=1e4), checkpoint_every=1)
    last = info.value.last_checkpoint
    # The loss went non-finite at step last + 2, computed from the weights of step last + 1:
    # that checkpoint was written (its own step was finite) and is then deleted as not good.
    assert f"at step {last + 2};" in str(info.value)
    assert CheckpointStore(tmp_path).latest_step() == last
    with pytest.warns(UserWarning, match=r"changed hyper-parameters: lr=10000.0 \(checkpoint\)"):
        state = _train(tmp_path, epochs=last // 4 + 1, method=ToyConvAE(lr=1e-3), resume=True,
                       allow_config_change=True)
    assert _leaves_finite(state)


def test_metrics_fetched_every_n_steps_still_log_every_step(tmp_path):
    _train(tmp_path, epochs=2, log_every=3)
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == list(range(1, 9))
    assert len({ln["train/loss"] for ln in lines}) == 8
    assert "train/finite" not in lines[0]


def test_batch_larger_than_the_data_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="exceeds the 6 training images"):
        state = _train(split=toy_split(n=6), batch_size=32, epochs=1)
    assert np.all(np.isfinite(state["params"]["w"]))


def test_bfloat16_compute_trains_close_to_float32(straight):
    f32 = straight[1]
    bf16 = _train(epochs=2, compute_dtype="bfloat16")
    assert bf16["params"]["w"].dtype == np.float32
    np.testing.assert_allclose(bf16["params"]["w"], f32["params"]["w"], atol=0.05)
    # The running statistics are updated in float32, not re-quantised to bfloat16 per step.
    mean = np.asarray(bf16["batch_stats"]["mean"])
    assert mean.dtype == np.float32
    assert np.any(mean != mean.astype(jax.numpy.bfloat16).astype(np.float32))


def test_epoch_seed_is_a_pure_function_of_seed_and_epoch():
    assert epoch_seed(7, 3) == epoch_seed(7, 3)
    assert len({epoch_seed(7, e) for e in range(50)}) == 50
    assert epoch_seed(7, 0) != epoch_seed(8, 0)


def test_validation_logs_shared_metrics(tmp_path):
    pytest.importorskip("anomjax.metrics", reason="metrics package not available")
    rng = np.random.default_rng(0)
    images = rng.uniform(0.3, 0.5, (6, 8, 8, 3)).astype(np.float32)
    masks = np.zeros((6, 8, 8), np.uint8)
    images[3:, 2:5, 2:5] = 1.0
    masks[3:, 2:5, 2:5] = 1
    val = ArraySplit(images, np.array([0, 0, 0, 1, 1, 1], np.int32), masks)
    _train(tmp_path, epochs=1, val_split=val, val_every=2)
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val_lines = [ln for ln in lines if "val/image_auroc" in ln]
    assert [ln["step"] for ln in val_lines] == [2, 4]
    assert val_lines[-1]["val/image_auroc"] == 1.0


def test_init_gets_the_first_batch():
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Recording(ToyConvAE):
        def init(self, key, images):
            seen.append(np.asarray(images))
            return super().init(key, images)

    split = toy_split(n=10)
    train_method(Recording(), jax.random.key(0), split, epochs=1, batch_size=4, disable=True)
    np.testing.assert_array_equal(seen[0], split.images[:4])


def test_init_on_all_images_streams_a_reiterable_of_batches():
    passes = []

    @dataclasses.dataclass(frozen=True)
    class TwoPasses(ToyConvAE):
        init_on_all_images: ClassVar[bool] = True

        def init(self, key, images):
            assert not isinstance(images, np.ndarray)
            for _ in range(2):
                batches = list(images)
                assert all(b.dtype == np.float32 and b.shape[1:] == (8, 8, 3) and len(b) <= 4
                           for b in batches)
                passes.append(np.concatenate(batches))
            return super().init(key, passes[0][:4])

    split = toy_split(n=10)
    train_method(TwoPasses(), jax.random.key(0), split, epochs=1, batch_size=4, disable=True)
    assert len(passes) == 2
    np.testing.assert_array_equal(passes[0], split.images)
    np.testing.assert_array_equal(passes[1], split.images)


def test_a_budget_in_steps_stops_part_way_through_an_epoch(tmp_path, straight):
    """toy_split(): 16 images, batch 4 -> 4 steps an epoch. steps=8 is epochs=2 exactly;
    steps=6 stops in the second epoch, and resuming it to 8 gives the straight run."""
    by_steps = _train(steps=8, epochs=None)
    chex.assert_trees_all_equal(straight[1], by_steps)
    _train(tmp_path, steps=6, epochs=None)
    logged = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text()
              .splitlines()]
    assert logged == list(range(1, 7)) and CheckpointStore(tmp_path).latest_step() == 6
    resumed = _train(tmp_path, steps=8, epochs=None, resume=True)  # constant schedule
    chex.assert_trees_all_equal(straight[1], resumed)


def test_budget_arguments_are_checked():
    with pytest.raises(ValueError, match="epochs .2. or as steps .3., not both"):
        _train(steps=3)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        _train(steps=0, epochs=None)


@dataclasses.dataclass(frozen=True)
class CosineToy(ToyConvAE):
    """A learning rate decayed over the run's length: the schedule depends on the budget."""

    name: ClassVar[str] = "toy_cosine"

    def optimizer(self, total_steps: int):
        return optax.sgd(optax.cosine_decay_schedule(self.lr, total_steps))


@dataclasses.dataclass(frozen=True)
class HalfwayPhases(ToyGroups):
    """Phases that switch half-way through the run, as f-AnoGAN's GAN/encoder phases do."""

    name: ClassVar[str] = "toy_halfway_phases"

    def optimizer(self, total_steps: int):
        grouped = super().optimizer(total_steps)
        first, last = grouped.phases
        return dataclasses.replace(grouped, phases=(dataclasses.replace(
            first, until=total_steps // 2), last))


@pytest.mark.parametrize("method, match", [
    (CosineToy(), "the learning-rate schedule gives another next update"),
    (HalfwayPhases(), r"the phase boundaries move from steps \[4, None\] to \[8, None\]"),
])
def test_a_resume_that_moves_the_schedule_or_the_phases_is_refused(tmp_path, method, match):
    _train(tmp_path, method=method, steps=8, epochs=None)
    with pytest.raises(ValueError, match=f"written for 8 steps.*{match}"):
        _train(tmp_path, method=method, steps=16, epochs=None, resume=True)
    with pytest.warns(UserWarning, match=match):
        _train(tmp_path, method=method, steps=16, epochs=None, resume=True,
               allow_config_change=True)


@dataclasses.dataclass(frozen=True)
class CalibratedSign(ToyConvAE):
    """Scores with the wrong sign until ``calibrate`` fixes it: a validation that skipped
    calibration would report image AUROC 0 on the split below, a calibrated one 1."""

    name: ClassVar[str] = "toy_calibrated_sign"

    def init(self, key, images):
        return {**super().init(key, images), "sign": -jnp.ones(())}

    def calibrate(self, state, batches):
        assert sum(len(b.images) for b in batches) == 16  # one pass over the training split
        return {**state, "sign": jnp.ones(())}

    def score(self, state, images):
        scores = super().score(state, images)
        return Scores(image=state["sign"] * scores.image, maps=state["sign"] * scores.maps)


def test_validation_at_chosen_steps_scores_the_calibrated_state_from_step_0(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0.3, 0.5, (6, 8, 8, 3)).astype(np.float32)
    masks = np.zeros((6, 8, 8), np.uint8)
    images[3:, 2:5, 2:5], masks[3:, 2:5, 2:5] = 1.0, 1
    val = ArraySplit(images, np.array([0, 0, 0, 1, 1, 1], np.int32), masks)
    _train(tmp_path, epochs=1, method=CalibratedSign(), val_split=val, val_steps=(0, 3))
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val_lines = [ln for ln in lines if "val/image_auroc" in ln]
    assert [ln["step"] for ln in val_lines] == [0, 3]
    assert [ln["val/image_auroc"] for ln in val_lines] == [1.0, 1.0]


def test_accumulating_two_batches_updates_like_one_batch_of_both(tmp_path):
    """``accumulate=2``: one optimiser update per two batches of 4, with their mean gradient,
    equals one update per batch of 8 over the same images (the toy's loss is a batch mean;
    no noise, so the per-step keys do not matter)."""
    method = ToyConvAE(noise=0.0)
    accumulated = _train(tmp_path / "acc", method=method, epochs=None, steps=2, batch_size=4,
                         accumulate=2)
    whole = _train(tmp_path / "whole", method=method, epochs=None, steps=2, batch_size=8)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                 accumulated["params"], whole["params"])
    assert not np.allclose(accumulated["params"]["w"],
                           _train(method=method, epochs=None, steps=4, batch_size=4)[
                               "params"]["w"])  # not simply 4 updates of 4
    logged = [json.loads(ln)["step"] for ln in (tmp_path / "acc" / "metrics.jsonl")
              .read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # 4 batches for 2 updates


def test_a_profiler_window_writes_a_trace(tmp_path):
    _train(tmp_path, epochs=1, profile_steps=(1, 3))
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))
