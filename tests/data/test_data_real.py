"""The two real datasets in ../shared/data are read with the documented counts."""

from __future__ import annotations

import numpy as np
import pytest

from anomjax.data import image_size, open_dataset, read_image

pytestmark = pytest.mark.real_data


def test_mvtec3d_tire_counts(shared_data):
    ds = open_dataset(shared_data / "mvtec3d_tire", image_size=64)
    report = ds.report()
    assert ds.layout == "mvtec"
    assert (report.n_train, report.n_test, report.n_masks) == (210, 112, 87)
    assert report.test_counts["good"] == 25
    assert set(report.test_counts) == {"good", "combined", "contamination", "cut", "hole"}
    assert report.empty_masks == ()
    batch = next(ds.test.batches(8, num_workers=2))
    assert batch.images.shape == (8, 64, 64, 3) and batch.masks.shape == (8, 64, 64)
    assert batch.labels.tolist() == [1] * 8 and batch.masks.sum() > 0


def test_magnetic_tile_counts_and_empty_masks(shared_data):
    ds = open_dataset(shared_data / "magnetic_tile", image_size=64)
    report = ds.report()
    assert (report.n_train, report.n_test, report.n_masks) == (400, 492, 392)
    assert report.test_counts["good"] == 100
    assert set(report.test_counts) == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    assert len(report.empty_masks) == 4
    empty = {s.path for s in ds.test.samples} & set(report.empty_masks)
    assert len(empty) == 4  # kept in the test split


def test_magnetic_tile_grayscale_jpegs_of_every_size_are_resized(shared_data):
    ds = open_dataset(shared_data / "magnetic_tile", image_size=48, crop=40)
    defective = [i for i, s in enumerate(ds.test.samples) if s.label == 1][:12]
    sizes = {image_size(ds.test.samples[i].path) for i in defective}
    assert len(sizes) > 1  # genuinely different native sizes
    assert read_image(ds.test.samples[defective[0]].path).shape[2] == 3
    batch = next(ds.test.batches(12, num_workers=2))
    assert batch.images.shape == (12, 40, 40, 3)
    np.testing.assert_array_equal(batch.images[..., 0], batch.images[..., 2])  # grayscale
    assert set(np.unique(batch.masks)) <= {0, 1}
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
