"""The one folder scanner shared by the dataset reader and ``predict``."""

from __future__ import annotations

import os

import pytest

from anomjax.data import DataError, expand_image_paths, image_files, open_dataset


@pytest.fixture
def messy_folder(tmp_path, write_image):
    """``train/good`` with 2 real images (one .webp) among junk a user's disk collects."""
    good = tmp_path / "cat" / "train" / "good"
    write_image(good / "000.png", seed=0)
    write_image(good / "001.webp", seed=1)
    write_image(good / "._000.png", seed=2)          # macOS resource fork (AppleDouble)
    write_image(good / ".hidden.png", seed=3)
    write_image(good / "__MACOSX" / "002.png", seed=4)
    write_image(good / "sub" / "003.png", seed=5)    # only found recursively
    (good / "notes.txt").write_text("x")
    (good / "folder.png").mkdir()
    os.symlink(good / "missing.png", good / "dangling.png")
    os.symlink(good / "loop.png", good / "loop.png")
    return good


def test_scanner_skips_resource_forks_hidden_files_and_broken_links(messy_folder):
    assert [p.name for p in image_files(messy_folder)] == ["000.png", "001.webp"]
    assert [p.relative_to(messy_folder).as_posix()
            for p in image_files(messy_folder, recursive=True)] == ["000.png", "001.webp",
                                                                    "sub/003.png"]


def test_predict_and_the_dataset_reader_see_the_same_images(messy_folder, write_image):
    write_image(messy_folder.parents[1] / "test" / "good" / "000.png")
    train = open_dataset(messy_folder.parents[1], layout="mvtec", image_size=8).train
    os.rename(messy_folder / "sub", messy_folder.parent / "elsewhere")
    assert [s.path for s in train.samples] == expand_image_paths([messy_folder])


def test_expand_image_paths_names_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.png: no such file or folder"):
        expand_image_paths([tmp_path / "nothere.png"])
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    with pytest.raises(DataError, match=r"link\.png: a dangling or looping symbolic link"):
        expand_image_paths([tmp_path / "link.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images \(.*\.webp\) found in"):
        expand_image_paths([tmp_path / "empty"])
