"""The training engine on one device: determinism, resume, divergence, logs."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import chex
import jax
import numpy as np
import pytest
from train_toy import ArraySplit, ToyConvAE, toy_split

from anomjax.train import CheckpointStore, TrainingDiverged, epoch_seed, train_method


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


def test_resume_with_another_batch_size_is_refused(tmp_path):
    _train(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="global_batch_size=4 but this run has "
                                         "global_batch_size=8"):
        _train(tmp_path, epochs=2, batch_size=8, resume=True)


def test_training_again_into_a_used_run_dir_is_refused(straight):
    with pytest.raises(ValueError, match="already holds checkpoints .latest step 8.; resume"):
        _train(straight[0], epochs=2)


def test_keep_last_k_checkpoints(tmp_path):
    _train(tmp_path, epochs=2, checkpoint_every=1, keep=2)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [7, 8]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step \d+; the last good "
                                               r"checkpoint \(step 4\)"):
        _train(tmp_path, epochs=20, method=ToyConvAE(lr=1e4))
    store = CheckpointStore(tmp_path)
    assert store.latest_step() == 4
    good = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(ln["train/loss"]) for ln in good)


def test_batch_larger_than_the_data_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="exceeds the 6 training images"):
        state = _train(split=toy_split(n=6), batch_size=32, epochs=1)
    assert np.all(np.isfinite(state["params"]["w"]))


def test_bfloat16_compute_trains_close_to_float32(straight):
    f32 = straight[1]
    bf16 = _train(epochs=2, compute_dtype="bfloat16")
    assert bf16["params"]["w"].dtype == np.float32
    np.testing.assert_allclose(bf16["params"]["w"], f32["params"]["w"], atol=0.05)


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


@pytest.mark.parametrize("all_images", [False, True])
def test_init_gets_the_first_batch_or_every_training_image(all_images):
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Recording(ToyConvAE):
        init_on_all_images: ClassVar[bool] = all_images

        def init(self, key, images):
            seen.append(np.asarray(images))
            return super().init(key, images)

    split = toy_split(n=10)
    train_method(Recording(), jax.random.key(0), split, epochs=1, batch_size=4, disable=True)
    expected = split.images if all_images else split.images[:4]
    np.testing.assert_array_equal(seen[0], expected)
