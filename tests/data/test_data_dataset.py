"""Streaming batches: order, shuffling, sharding, threading, and prediction batches."""

from __future__ import annotations

import numpy as np
import pytest

from anomjax.data import DataError, iter_image_batches, open_dataset
from anomjax.types import Batch


@pytest.fixture
def ten_images(tmp_path, write_image):
    root = tmp_path / "cat"
    for i in range(10):
        write_image(root / "train" / "good" / f"{i:03d}.png", seed=i, size=(20 + i, 30))
    write_image(root / "test" / "good" / "000.png")
    return root


def _paths(batches):
    return [p.rsplit("/", 1)[-1] for b in batches for p in b.paths]


def test_batches_in_order_with_remainder(ten_images):
    split = open_dataset(ten_images, image_size=8).train
    batches = list(split.batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert _paths(batches) == [f"{i:03d}.png" for i in range(10)]
    b = batches[0]
    assert isinstance(b, Batch)
    assert b.images.shape == (4, 8, 8, 3) and b.images.dtype == np.float32
    assert b.masks.shape == (4, 8, 8) and b.masks.dtype == np.uint8
    assert b.labels.dtype == np.int32 and b.defect_types == ("good",) * 4
    assert [len(b) for b in split.batches(4, drop_remainder=True)] == [4, 4]


def test_threads_give_the_same_pixels(ten_images):
    split = open_dataset(ten_images, image_size=8, crop=6).train
    a = split.load_all(num_workers=0)
    b = np.concatenate([x.images for x in split.batches(3, num_workers=4)])
    np.testing.assert_array_equal(a.images, b)
    assert a.images.shape == (10, 6, 6, 3)


def test_shuffle_is_deterministic_by_seed_and_epoch(ten_images):
    split = open_dataset(ten_images, image_size=8).train
    order = _paths(split.batches(3, shuffle=True, seed=1))
    assert order == _paths(split.batches(3, shuffle=True, seed=1))
    assert sorted(order) == [f"{i:03d}.png" for i in range(10)]
    assert order != _paths(split.batches(3, shuffle=True, seed=2))
    assert order != _paths(split.batches(3, shuffle=True, seed=1, epoch=1))


def test_shards_are_disjoint_and_cover_the_split(ten_images):
    split = open_dataset(ten_images, image_size=8).train
    shards = [_paths(split.batches(2, shuffle=True, seed=3, shard_index=i, num_shards=3))
              for i in range(3)]
    assert sorted(sum(shards, [])) == [f"{i:03d}.png" for i in range(10)]
    equal = [_paths(split.batches(2, shuffle=True, seed=3, shard_index=i, num_shards=3,
                                  drop_remainder=True)) for i in range(3)]
    assert [len(s) for s in equal] == [2, 2, 2]
    with pytest.raises(ValueError, match="shard_index"):
        list(split.batches(2, shard_index=3, num_shards=3))


def test_native_sizes_that_differ_cannot_be_batched(ten_images):
    split = open_dataset(ten_images, image_size=None).train
    assert len(next(split.batches(1))) == 1
    with pytest.raises(DataError, match=r"001\.png: image is \(21, 30\).*pass image_size"):
        next(split.batches(2))


def test_iter_image_batches(ten_images):
    paths = sorted((ten_images / "train" / "good").iterdir())[:5]
    out = list(iter_image_batches(paths, 2, 12, crop=10))
    assert [imgs.shape for imgs, _ in out] == [(2, 10, 10, 3)] * 2 + [(1, 10, 10, 3)]
    assert [p for _, ps in out for p in ps] == [str(p) for p in paths]


def test_resize_dtype_reaches_datasets_and_prediction_batches(ten_images):
    paths = sorted((ten_images / "train" / "good").iterdir())
    rounded = open_dataset(ten_images, image_size=12).train.load_all().images
    exact = open_dataset(ten_images, image_size=12, resize_dtype="float32").train.load_all()
    predicted = np.concatenate([b for b, _ in iter_image_batches(paths, 4, 12,
                                                                 resize_dtype="float32")])
    np.testing.assert_array_equal(predicted, exact.images)
    np.testing.assert_allclose(exact.images, rounded, atol=1 / 255)  # Pillow: fixed point
    assert np.abs(exact.images * 255 - np.round(exact.images * 255)).max() > 0.1
    np.testing.assert_allclose(rounded * 255, np.round(rounded * 255), atol=1e-4)
    with pytest.raises(ValueError, match="resize_dtype must be one of"):
        open_dataset(ten_images, resize_dtype="float16")


def test_a_split_decodes_each_image_once_and_returns_the_same_arrays(tmp_path, monkeypatch):
    from anomjax.data import dataset as dataset_module
    from anomjax.data.synthetic import write_mvtec

    write_mvtec(tmp_path, categories=("nut",), n_train=6, n_test_good=1, n_test_defect=1,
                image_size=48, seed=0, disable=True)
    reads = []
    real = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda p: reads.append(p) or real(p))
    for resize_dtype in ("uint8", "float32"):
        reads.clear()
        split = open_dataset(tmp_path / "nut", image_size=32, resize_dtype=resize_dtype).train
        first = split.load_all(num_workers=0)
        second = split.load_all(num_workers=0)
        assert len(reads) == 6  # the second pass came from the cache
        np.testing.assert_array_equal(first.images, second.images)
        assert first.images.dtype == np.float32
        decoded = [dataset_module.load_sample(s, 32, None, resize_dtype)[0]
                   for s in split.samples]
        np.testing.assert_array_equal(second.images, np.stack(decoded))


def test_past_its_bound_the_cache_decodes_again_and_says_so(tmp_path, monkeypatch):
    from anomjax.data.synthetic import write_mvtec

    write_mvtec(tmp_path, categories=("nut",), n_train=6, n_test_good=1, n_test_defect=1,
                image_size=48, seed=0, disable=True)
    monkeypatch.setenv("ANOMJAX_DATA_CACHE_MB", str(2.5 * 32 * 32 * 4 / 2**20))  # 2 images
    split = open_dataset(tmp_path / "nut", image_size=32).train
    with pytest.warns(UserWarning, match="exceed the data cache"):
        split.load_all(num_workers=0)
    np.testing.assert_array_equal(split.load_all(num_workers=0).images,
                                  split.load_all(num_workers=0).images)
