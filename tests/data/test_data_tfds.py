"""TFDS builders read MVTec AD and BTAD folders from manual_dir, offline."""

from __future__ import annotations

import numpy as np
import pytest

from anomjax.data import open_dataset, synthetic

tfds = pytest.importorskip("tensorflow_datasets", reason="the [tfds] extra is not installed")

from anomjax.data import tfds_builders  # noqa: E402

pytestmark = pytest.mark.slow


def _examples(builder, split):
    return sorted(tfds.as_numpy(builder.as_dataset(split=split)), key=lambda e: e["path"])


def test_mvtec_builder_matches_the_folder_reader(tmp_path):
    synthetic.write_mvtec(tmp_path / "manual", ["nut"], n_train=3, n_test_good=1,
                          n_test_defect=2, image_size=40, disable=True)
    builder = tfds_builders.prepare_builder("mvtec_ad", "nut", manual_dir=tmp_path / "manual",
                                            data_dir=tmp_path / "tfds")
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["test"].num_examples == 3
    test = _examples(builder, "test")
    assert [e["path"].decode() for e in test] == ["test/bent/000.png", "test/good/000.png",
                                                   "test/missing/000.png"]
    assert [int(e["label"]) for e in test] == [1, 0, 1]
    reader = open_dataset(tmp_path / "manual" / "nut", image_size=None).test.load_all()
    by_path = {p.split("nut/", 1)[1]: i for i, p in enumerate(reader.paths)}
    for e in test:
        i = by_path[e["path"].decode()]
        np.testing.assert_array_equal(e["image"], np.round(reader.images[i] * 255))
        np.testing.assert_array_equal(e["mask"][..., 0], reader.masks[i])
    assert "bottle" in {c.name for c in tfds_builders.get_builder(
        "mvtec_ad", "nut", data_dir=tmp_path / "tfds").BUILDER_CONFIGS}


def test_btad_builder(tmp_path, write_image, write_mask):
    root = tmp_path / "manual" / "01"
    write_image(root / "train" / "ok" / "0000.bmp", seed=0)
    write_image(root / "test" / "ok" / "0001.bmp", seed=1, mode="L")
    write_image(root / "test" / "ko" / "0002.bmp", seed=2)
    write_mask(root / "ground_truth" / "ko" / "0002.png")
    builder = tfds_builders.prepare_builder("btad", "01", manual_dir=tmp_path / "manual",
                                            data_dir=tmp_path / "tfds")
    test = _examples(builder, "test")
    assert [(e["path"].decode(), int(e["label"]), e["defect_type"].decode()) for e in test] == \
        [("test/ko/0002.bmp", 1, "ko"), ("test/ok/0001.bmp", 0, "good")]
    assert test[1]["image"].shape == (24, 32, 3)  # grayscale replicated
    assert int(test[0]["mask"].sum()) == 4 * 6  # the 4x6 box of write_mask
    with pytest.raises(ValueError, match="no TFDS builder"):
        tfds_builders.get_builder("kitti", "01", data_dir=tmp_path / "tfds")
