"""Each layout on a tiny generated folder, layout detection, and the errors for bad folders."""

from __future__ import annotations

import numpy as np
import pytest

from anomjax.data import DataError, FolderSpec, detect_layout, open_dataset


def _summary(ds):
    test = ds.test.load_all(num_workers=0)
    return len(ds.train), test.labels.tolist(), list(test.defect_types), test.masks.sum((1, 2))


def test_mvtec(mvtec_folder):
    ds = open_dataset(mvtec_folder, image_size=16)
    assert ds.layout == "mvtec" and ds.name == "widget"
    n_train, labels, types, mask_area = _summary(ds)
    assert n_train == 3
    assert labels == [1, 1, 0, 0] and types == ["crack", "crack", "good", "good"]
    assert all(mask_area[:2] > 0) and all(mask_area[2:] == 0)
    assert open_dataset(mvtec_folder, layout="mpdd", image_size=16).layout == "mpdd"


def test_mvtec3d_rgb(tmp_path, write_image, write_mask):
    root = tmp_path / "tire"
    for i in range(2):
        write_image(root / "train" / "good" / "rgb" / f"{i:03d}.png", seed=i)
        write_image(root / "test" / "good" / "rgb" / f"{i:03d}.png", seed=5 + i)
        write_image(root / "test" / "cut" / "rgb" / f"{i:03d}.png", seed=9 + i)
        write_mask(root / "test" / "cut" / "gt" / f"{i:03d}.png")
        write_image(root / "test" / "cut" / "xyz" / f"{i:03d}.png", seed=9 + i)  # ignored
    assert detect_layout(root) == "mvtec3d"
    n_train, labels, types, mask_area = _summary(open_dataset(root, image_size=16))
    assert n_train == 2 and labels == [1, 1, 0, 0] and types[0] == "cut"
    assert all(mask_area[:2] > 0)


def test_btad(tmp_path, write_image, write_mask):
    root = tmp_path / "01"
    for i in range(2):
        write_image(root / "train" / "ok" / f"{i:04d}.bmp", seed=i)
        write_image(root / "test" / "ok" / f"{i:04d}.bmp", seed=3 + i)
        write_image(root / "test" / "ko" / f"{i:04d}.bmp", seed=6 + i)
        write_mask(root / "ground_truth" / "ko" / f"{i:04d}.png")
    assert detect_layout(root) == "btad"
    n_train, labels, types, mask_area = _summary(open_dataset(root, image_size=16))
    assert n_train == 2 and labels == [0, 0, 1, 1] and types == ["good", "good", "ko", "ko"]
    assert all(mask_area[2:] > 0)


def test_visa_split_csv(tmp_path, write_image, write_mask):
    visa = tmp_path / "VisA"
    cat = visa / "candle"
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        write_image(cat / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", seed=i)
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    write_image(cat / "Data" / "Images" / "Normal" / "0100.JPG", seed=7)
    rows.append("candle,test,normal,candle/Data/Images/Normal/0100.JPG,")
    write_image(cat / "Data" / "Images" / "Anomaly" / "000.JPG", seed=8)
    write_mask(cat / "Data" / "Masks" / "Anomaly" / "000.png")
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,"
                "candle/Data/Masks/Anomaly/000.png")
    rows.append("capsules,train,normal,capsules/Data/Images/Normal/0000.JPG,")  # other object
    (visa / "split_csv").mkdir(parents=True)
    (visa / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    assert detect_layout(cat) == "visa"
    n_train, labels, types, mask_area = _summary(open_dataset(cat, image_size=16))
    assert n_train == 3 and labels == [0, 1] and types == ["good", "anomaly"]
    assert mask_area[0] == 0 and mask_area[1] > 0


def test_folder_with_and_without_masks(tmp_path, write_image, write_mask):
    root = tmp_path / "parts"
    for i in range(10):
        write_image(root / "good" / f"n{i}.png", seed=i)
    for i in range(2):
        write_image(root / "defect" / "dent" / f"d{i}.png", seed=20 + i)
        write_mask(root / "masks" / "dent" / f"d{i}_mask.png")
    assert detect_layout(root) == "folder"
    plain = open_dataset(root, image_size=16)
    assert not plain.has_masks and len(plain.train) == 8 and len(plain.test) == 4
    masked = open_dataset(root, image_size=16, folder=FolderSpec(mask="masks"))
    assert masked.has_masks
    _, labels, types, mask_area = _summary(masked)
    assert labels == [0, 0, 1, 1] and types[2:] == ["dent", "dent"]
    assert all(mask_area[2:] > 0)
    train_paths = {s.path for s in masked.train.samples}
    assert not train_paths & {s.path for s in masked.test.samples}


def test_empty_train_good(tmp_path, write_image):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    write_image(tmp_path / "cat" / "test" / "good" / "0.png")
    with pytest.raises(DataError, match=r"train/good: no training images"):
        open_dataset(tmp_path / "cat")


def test_unknown_layout(tmp_path, write_image):
    write_image(tmp_path / "cat" / "images" / "0.png")
    with pytest.raises(DataError, match=r"cat: unknown dataset layout \(found images\)"):
        open_dataset(tmp_path / "cat")
    with pytest.raises(DataError, match=r"unknown layout 'kitti'"):
        open_dataset(tmp_path / "cat", layout="kitti")
    with pytest.raises(DataError, match="dataset folder not found"):
        open_dataset(tmp_path / "missing")


def test_missing_mask(mvtec_folder):
    (mvtec_folder / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"test/crack/001\.png: defective image has no mask"):
        open_dataset(mvtec_folder)


def test_mask_size_mismatch_is_reported_on_read(mvtec_folder, write_mask):
    write_mask(mvtec_folder / "ground_truth" / "crack" / "000_mask.png", size=(20, 20))
    ds = open_dataset(mvtec_folder, image_size=16)
    with pytest.raises(DataError, match=r"000_mask\.png: mask is 20x20 .*000\.png is 32x24"):
        ds.test.load_all(num_workers=2)
    with pytest.raises(DataError, match=r"000_mask\.png: mask is 20x20"):
        ds.report()


def test_truncated_image_in_a_dataset(mvtec_folder):
    path = mvtec_folder / "train" / "good" / "001.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = open_dataset(mvtec_folder, image_size=16)
    with pytest.raises(DataError, match=r"train/good/001\.png: cannot read image"):
        list(ds.train.batches(2, num_workers=2))


def test_empty_masks_are_kept_and_reported(mvtec_folder, write_mask):
    write_mask(mvtec_folder / "ground_truth" / "crack" / "001_mask.png", box=None)
    ds = open_dataset(mvtec_folder, image_size=16)
    report = ds.report()
    assert report.n_masks == 2 and report.test_counts == {"good": 2, "crack": 2}
    assert [p.endswith("crack/001.png") for p in report.empty_masks] == [True]
    assert "1 defective images have an empty mask (kept)" in str(report)
    test = ds.test.load_all()
    assert test.labels.tolist() == [1, 1, 0, 0] and np.sum(test.masks[1]) == 0
