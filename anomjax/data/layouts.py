"""Discovering the samples of a dataset folder in each supported layout.

A layout turns a category folder into two lists of :class:`Sample` (train, test). Nothing
is decoded here; mask sizes and empty masks are checked when images are read (see
:mod:`anomjax.data.dataset`).

Layouts:

* ``mvtec`` (and ``mpdd``, the same layout): ``train/good/*``, ``test/<defect>/*``,
  ``ground_truth/<defect>/<stem>_mask.png``.
* ``mvtec3d`` (MVTec 3D-AD, RGB only): ``train/good/rgb/*.png``,
  ``test/<defect>/rgb/*.png``, ``test/<defect>/gt/*.png``.
* ``btad``: ``train/ok/*``, ``test/ok/*``, ``test/ko/*``, ``ground_truth/ko/<stem>.png``.
* ``visa``: the category folder of VisA with its split CSV (``split_csv/1cls.csv`` beside
  the categories, columns ``object,split,label,image,mask``).
* ``folder``: a normal directory, an abnormal directory (optionally with one subdirectory
  per defect type) and an optional mask directory mirroring the abnormal one.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from anomjax.data.errors import DataError
from anomjax.data.image_io import IMAGE_EXTENSIONS
from anomjax.data.scan import image_files

LAYOUTS = ("mvtec", "mpdd", "mvtec3d", "btad", "visa", "folder")
GOOD = "good"


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
      path: the image file.
      label: 1 = defective, 0 = normal.
      mask_path: the ground-truth mask file, ``None`` for normal images (and for defective
        images of a ``folder`` dataset without masks).
      defect_type: ``"good"`` for normal images, else the defect name.
    """

    path: str
    label: int
    mask_path: str | None
    defect_type: str


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    """Where the parts of a ``folder`` dataset are, relative to its root (or absolute).

    Attributes:
      normal: directory of normal images; all are training images unless ``normal_test``
        is given or ``normal_test_ratio`` > 0.
      abnormal: directory of defective test images (subdirectories name defect types).
      mask: directory of masks mirroring ``abnormal`` (``<stem>.png`` or ``<stem>_mask.png``);
        ``None`` when there are no masks.
      normal_test: directory of normal test images.
      normal_test_ratio: fraction of ``normal`` moved to the test split when ``normal_test``
        is ``None`` (chosen by a fixed-seed permutation).
    """

    normal: str = "good"
    abnormal: str = "defect"
    mask: str | None = None
    normal_test: str | None = None
    normal_test_ratio: float = 0.2


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (see :mod:`anomjax.data.scan`)."""
    return image_files(folder)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _mask_index(folder: Path) -> dict[str, Path]:
    """``stem -> mask path`` for masks named ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    index: dict[str, Path] = {}
    for path in _images_in(folder):
        stem = path.stem
        if stem.endswith("_mask"):
            index[stem[: -len("_mask")]] = path
        else:
            index.setdefault(stem, path)
    return index


def _find_mask(image: Path, index: dict[str, Path], mask_folder: Path) -> str:
    mask = index.get(image.stem)
    if mask is None:
        for name in (image.stem + "_mask.png", image.stem + ".png"):
            if (mask_folder / name).is_symlink():
                raise DataError(f"{image}: its mask {mask_folder / name} is a dangling or "
                                "looping symbolic link")
        raise DataError(f"{image}: defective image has no mask; expected "
                        f"{mask_folder / (image.stem + '_mask.png')} or "
                        f"{mask_folder / (image.stem + '.png')}")
    return str(mask)


def _require_train(samples: list[Sample], folder: Path) -> list[Sample]:
    if not samples:
        raise DataError(f"{folder}: no training images found (empty or missing; looked for "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    return samples


def _discover_mvtec(root: Path, rgb: bool = False) -> tuple[list[Sample], list[Sample]]:
    """The ``mvtec`` layout; with ``rgb`` the ``mvtec3d`` one (images in ``rgb/``, masks in
    ``gt/`` beside them)."""
    sub = "rgb" if rgb else ""
    train_dir = root / "train" / GOOD / sub
    train = _require_train([Sample(str(p), 0, None, GOOD) for p in _images_in(train_dir)],
                           train_dir)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: test folder is missing")
    test: list[Sample] = []
    for defect_dir in _subdirs(test_dir):
        defect = defect_dir.name
        images = _images_in(defect_dir / sub)
        if defect == GOOD:
            test += [Sample(str(p), 0, None, GOOD) for p in images]
            continue
        gt = defect_dir / "gt" if rgb else root / "ground_truth" / defect
        index = _mask_index(gt)
        test += [Sample(str(p), 1, _find_mask(p, index, gt), defect) for p in images]
    return train, test


def _discover_btad(root: Path) -> tuple[list[Sample], list[Sample]]:
    train_dir = root / "train" / "ok"
    train = _require_train([Sample(str(p), 0, None, GOOD) for p in _images_in(train_dir)],
                           train_dir)
    if not (root / "test").is_dir():
        raise DataError(f"{root / 'test'}: test folder is missing")
    test = [Sample(str(p), 0, None, GOOD) for p in _images_in(root / "test" / "ok")]
    gt = root / "ground_truth" / "ko"
    index = _mask_index(gt)
    test += [Sample(str(p), 1, _find_mask(p, index, gt), "ko")
             for p in _images_in(root / "test" / "ko")]
    return train, test


def _visa_csv(root: Path) -> Path:
    for candidate in (root / "split_csv" / "1cls.csv", root.parent / "split_csv" / "1cls.csv",
                      root / "1cls.csv"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root}: VisA split CSV not found (looked for split_csv/1cls.csv in the "
                    "folder and beside it, and 1cls.csv in the folder)")


def _discover_visa(root: Path) -> tuple[list[Sample], list[Sample]]:
    csv_path = _visa_csv(root)
    base = csv_path.parent.parent if csv_path.parent.name == "split_csv" else csv_path.parent

    def resolve(rel: str, row_no: int) -> str:
        for candidate in (base / rel, root / rel, root.parent / rel):
            if candidate.is_file():
                return str(candidate)
        raise DataError(f"{csv_path}: row {row_no} names {rel!r}, which does not exist")

    train: list[Sample] = []
    test: list[Sample] = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"split", "label", "image"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{csv_path}: missing columns {sorted(missing)} "
                            "(expected object,split,label,image,mask)")
        for row_no, row in enumerate(reader, start=2):
            if root != base and row.get("object", root.name) != root.name:
                continue  # a row of another category
            image = resolve(row["image"], row_no)
            defective = row["label"].strip().lower() not in ("normal", "good", "0")
            mask = None
            if defective:
                if not (row.get("mask") or "").strip():
                    raise DataError(f"{image}: defective image has no mask in {csv_path} "
                                    f"(row {row_no})")
                mask = resolve(row["mask"].strip(), row_no)
            sample = Sample(image, int(defective), mask, "anomaly" if defective else GOOD)
            split = row["split"].strip().lower()
            if split == "train":
                if defective:
                    raise DataError(f"{image}: defective image in the train split of {csv_path}")
                train.append(sample)
            elif split == "test":
                test.append(sample)
            else:
                raise DataError(f"{csv_path}: row {row_no} has unknown split {row['split']!r}")
    return _require_train(train, csv_path), test


def _discover_folder(root: Path, spec: FolderSpec) -> tuple[list[Sample], list[Sample]]:
    normal_dir = root / spec.normal
    normals = _require_train(
        [Sample(str(p), 0, None, GOOD) for p in _images_in(normal_dir)], normal_dir)
    if spec.normal_test is not None:
        train, test = normals, [Sample(str(p), 0, None, GOOD)
                                for p in _images_in(root / spec.normal_test)]
    else:
        if not 0.0 <= spec.normal_test_ratio < 1.0:
            raise ValueError(f"normal_test_ratio must be in [0, 1), got {spec.normal_test_ratio}")
        n_test = int(round(spec.normal_test_ratio * len(normals)))
        held = set(np.random.default_rng(0).permutation(len(normals))[:n_test].tolist())
        train = [s for i, s in enumerate(normals) if i not in held]
        test = [s for i, s in enumerate(normals) if i in held]
        _require_train(train, normal_dir)
    abnormal_dir = root / spec.abnormal
    if not abnormal_dir.is_dir():
        raise DataError(f"{abnormal_dir}: abnormal image folder is missing")
    groups = [(d.name, d) for d in _subdirs(abnormal_dir)] or [(abnormal_dir.name, abnormal_dir)]
    for defect, folder in groups:
        if spec.mask is None:
            test += [Sample(str(p), 1, None, defect) for p in _images_in(folder)]
            continue
        mask_folder = (root / spec.mask) / folder.relative_to(abnormal_dir)
        index = _mask_index(mask_folder)
        test += [Sample(str(p), 1, _find_mask(p, index, mask_folder), defect)
                 for p in _images_in(folder)]
    return train, test


def detect_layout(root: str | os.PathLike) -> str:
    """Name the layout of a category folder, or raise :class:`DataError` saying what was seen."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if (root / "train" / "ok").is_dir():
        return "btad"
    if (root / "train" / GOOD / "rgb").is_dir():
        return "mvtec3d"
    if (root / "train" / GOOD).is_dir():
        return "mvtec"
    if (root / "Data" / "Images").is_dir():
        return "visa"
    spec = FolderSpec()
    if (root / spec.normal).is_dir() and (root / spec.abnormal).is_dir():
        return "folder"
    entries = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
    raise DataError(f"{root}: unknown dataset layout (found {entries}); expected train/good "
                    "(mvtec, mpdd), train/good/rgb (mvtec3d), train/ok (btad), Data/Images "
                    "(visa) or good/ + defect/ (folder); name one with layout=...")


def discover(root: str | os.PathLike, layout: str | None = None,
             folder: FolderSpec | None = None) -> tuple[str, list[Sample], list[Sample]]:
    """``(layout, train samples, test samples)`` of the category folder ``root``.

    ``layout=None`` detects it; ``folder`` configures the ``folder`` layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if layout is None:
        layout = detect_layout(root)
    if layout in ("mvtec", "mpdd"):
        train, test = _discover_mvtec(root)
    elif layout == "mvtec3d":
        train, test = _discover_mvtec(root, rgb=True)
    elif layout == "btad":
        train, test = _discover_btad(root)
    elif layout == "visa":
        train, test = _discover_visa(root)
    elif layout == "folder":
        train, test = _discover_folder(root, folder or FolderSpec())
    else:
        raise DataError(f"{root}: unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    return layout, train, test
