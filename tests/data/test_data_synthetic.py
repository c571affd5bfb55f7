"""The embedded synthetic dataset: determinism, masks, MVTec round trip, not trivially separable."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomjax.data import open_dataset, synthetic

SMALL = dict(n_train=6, n_test_good=2, n_test_defect=4, image_size=48)


@pytest.mark.parametrize("category", synthetic.CATEGORIES)
def test_category_images_and_masks(category):
    ds = synthetic.make_category(category, **SMALL)
    assert ds.name == category and len(ds.train) == 6 and len(ds.test) == 6
    test = ds.test.load_all(num_workers=0)
    assert test.images.shape == (6, 48, 48, 3) and test.images.dtype == np.float32
    assert 0.0 <= test.images.min() and test.images.max() <= 1.0
    assert test.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert list(test.defect_types[2:]) == list(synthetic.defect_types(category))
    areas = test.masks.reshape(6, -1).mean(1)
    assert np.all(areas[:2] == 0) and np.all(areas[2:] > 0) and np.all(areas[2:] < 0.2)
    train = ds.train.load_all(num_workers=0)
    assert not np.allclose(train.images[0], train.images[1])  # normal images vary


def test_deterministic_and_independent_of_dataset_size():
    a = synthetic.make_category("metal", **SMALL).test.load_all()
    b = synthetic.make_category("metal", n_train=2, n_test_good=2, n_test_defect=8,
                                image_size=48).test.load_all()
    np.testing.assert_array_equal(a.images, b.images[:6])
    np.testing.assert_array_equal(a.masks, b.masks[:6])
    c = synthetic.make_category("metal", **{**SMALL, "seed": 1}).test.load_all()
    assert not np.allclose(a.images, c.images)


def test_generate_image_is_pure_and_checks_names():
    first, mask = synthetic.generate_image("fabric", "misweave", 0, image_size=64)
    again, mask_again = synthetic.generate_image("fabric", "misweave", 0, image_size=64)
    assert first.tobytes() == again.tobytes() and mask.tobytes() == mask_again.tobytes()
    with pytest.raises(ValueError, match="no defect 'hole'"):
        synthetic.generate_image("nut", "hole", 0)
    with pytest.raises(ValueError, match="unknown synthetic category"):
        synthetic.make_category("bottle")


def test_write_mvtec_round_trip(tmp_path):
    (folder,) = synthetic.write_mvtec(tmp_path, ["wood"], **SMALL, disable=True)
    ds = open_dataset(folder, image_size=48)
    assert ds.layout == "mvtec" and len(ds.train) == 6
    report = ds.report()
    assert report.n_masks == 4 and report.empty_masks == ()
    memory = synthetic.make_category("wood", **SMALL).test.load_all()
    disk = ds.test.load_all()
    order = np.argsort([p.split("wood/", 1)[1] for p in memory.paths])
    disk_order = np.argsort([p.split("wood/", 1)[1] for p in disk.paths])
    np.testing.assert_allclose(disk.images[disk_order], memory.images[order], atol=0.5 / 255)
    np.testing.assert_array_equal(disk.masks[disk_order], memory.masks[order])


@pytest.mark.slow
def test_a_pixel_intensity_threshold_does_not_separate_defects():
    for category in synthetic.CATEGORIES:
        ds = synthetic.make_category(category, n_train=12, n_test_good=2, n_test_defect=12,
                                     image_size=64)
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        train = ds.train.load_all().images @ luma
        test = ds.test.load_all()
        intensity = test.images @ luma
        labels = test.masks.ravel()
        scores = {
            "bright": intensity.ravel(), "dark": -intensity.ravel(),
            "deviation": np.abs(intensity - train.mean(0)).ravel(),
        }
        for name, s in scores.items():
            assert roc_auc_score(labels, s) < 0.8, (category, name)
