"""Tiled scoring (:mod:`anomjax.tiling`): the grid, the blend, bounded batches, and a small
defect in a tile corner of a 1024 px image found by the checkpoint and by its artefact."""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from anomjax import deploy, runs, tiling
from anomjax.cli import main
from anomjax.data import read_image
from anomjax.data.synthetic import write_mvtec
from anomjax.methods.base import make_method
from anomjax.run_folder import load_run


def test_the_grid_covers_the_image_with_a_last_tile_flush_to_the_edge():
    assert tiling.tile_origins((64, 64), 64) == [(0, 0)]
    assert tiling.tile_origins((100, 64), 64, 48) == [(0, 0), (36, 0)]
    origins = tiling.tile_origins((1024, 1000), 64, 48)
    assert origins[0] == (0, 0) and origins[-1] == (960, 936)
    count = np.zeros((1024, 1000), int)
    for top, left in origins:
        count[top:top + 64, left:left + 64] += 1
    assert count.min() >= 1


@pytest.mark.parametrize("size, tile, stride, match", [
    ((32, 64), 64, None, "smaller than a tile"),
    ((128, 128), 64, 65, "exceeds the tile"),
    ((128, 128), 0, None, "positive"),
])
def test_bad_grids_are_refused(size, tile, stride, match):
    with pytest.raises(ValueError, match=match):
        tiling.tile_origins(size, tile, stride)


def test_blend_is_the_mean_over_overlaps():
    origins = [(0, 0), (0, 2)]
    maps = np.stack([np.full((2, 4), 1.0), np.full((2, 4), 3.0)])
    np.testing.assert_array_equal(tiling.blend(maps, origins, (2, 6)),
                                  [[1, 1, 2, 2, 3, 3]] * 2)


def test_tiles_are_scored_in_bounded_batches_of_one_shape():
    calls = []

    def score(tiles):
        calls.append(tiles.shape)
        return tiles[..., 0].astype(np.float32)

    image = np.random.default_rng(0).random((1024, 1024, 3)).astype(np.float32)
    blended, top = tiling.score_tiled(image, score, 64, 48, batch_size=16)
    assert len(calls) == -(-21 * 21 // 16) and set(calls) == {(16, 64, 64, 3)}
    np.testing.assert_allclose(blended, image[..., 0], rtol=1e-6)  # mean of equal values
    assert top == blended.max()


# ---------------------------------------------------------------------------- a fitted run


@pytest.fixture(scope="module")
def padim(tmp_path_factory) -> tuple[Path, Path, Path]:
    """``(run, artefact, category)``: PaDiM fitted at 64 px on a tiny synthetic category."""
    root = tmp_path_factory.mktemp("tiles")
    write_mvtec(root / "data", categories=("wood",), n_train=8, n_test_good=2,
                n_test_defect=3, image_size=64, seed=5, disable=True)
    category = root / "data" / "wood"
    run = root / "run"
    runs.fit(make_method("padim"), category, run, image_size=64, batch_size=4,
             progress=False)
    runs.test(run, category, batch_size=4, progress=False)
    runs.export(run, root / "artefact")
    return run, root / "artefact", category


def test_a_tile_grid_equal_to_the_image_gives_the_untiled_result(padim):
    run, artefact, category = padim
    method, state, _ = load_run(run)
    score_fn = jax.jit(method.score)
    files = sorted((category / "train").rglob("*.png"))[:4]
    images = np.stack([read_image(f) for f in files]).astype(np.float32) / 255.0
    untiled = np.asarray(score_fn(state, images).maps)
    # one tile: the untiled map; a 2x2 grid without overlap: the four maps side by side
    # (bit-identical for the same batch shape; XLA may round differently across shapes)
    single, _ = tiling.score_tiled(images[0], lambda t: np.asarray(score_fn(state, t).maps),
                                   64, batch_size=1)
    np.testing.assert_array_equal(single, np.asarray(score_fn(state, images[:1]).maps)[0])
    mosaic = np.concatenate([np.concatenate(images[:2], 1), np.concatenate(images[2:], 1)], 0)
    blended, _ = tiling.score_tiled(mosaic, lambda t: np.asarray(score_fn(state, t).maps),
                                    64, batch_size=4)
    expected = np.concatenate([np.concatenate(untiled[:2], 1),
                               np.concatenate(untiled[2:], 1)], 0)
    np.testing.assert_array_equal(blended, expected)
    scorer = deploy.load(artefact)
    got = scorer.score_tiled((mosaic * 255).round().astype(np.uint8), batch_size=4)
    np.testing.assert_array_equal(got.maps[0], expected)


def large_image(category: Path, side: int = 1024) -> np.ndarray:
    """A ``side`` px uint8 image of the category's 64 px training images, side by side."""
    tiles = [read_image(f) for f in sorted((category / "train").rglob("*.png"))]
    n = side // 64
    rows = [np.concatenate([tiles[(r * n + c) % len(tiles)] for c in range(n)], 1)
            for r in range(n)]
    return np.concatenate(rows, 0)


def test_a_small_defect_in_a_tile_corner_of_a_1024_px_image_is_found(padim, tmp_path):
    run, artefact, category = padim
    clean = large_image(category)
    defective = clean.copy()
    top, left = 9 * 64 + 56, 5 * 64 + 56  # the bottom-right corner of a tile
    defective[top:top + 8, left:left + 8] = (255, 0, 0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(clean).save(folder / "clean.png")
    Image.fromarray(defective).save(folder / "defective.png")
    rows = {}
    for name, scorer in (("run", run), ("artefact", artefact)):
        out = tmp_path / name
        assert main(["predict", str(scorer), str(folder), "--out", str(out), "--tile-size",
                     "64", "--tile-stride", "32", "--batch-size", "16"]) == 0
        rows[name] = list(csv.DictReader(open(out / "scores.csv")))
        heat = np.load(out / "0001_defective_map.npy")
        assert heat.shape == (1024, 1024)
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        assert abs(y - (top + 4)) <= 16 and abs(x - (left + 4)) <= 16, (y, x)
    assert rows["run"] == rows["artefact"]
    clean_row, defect_row = rows["run"]
    assert float(defect_row["score"]) > 1.5 * float(clean_row["score"])


def test_tile_size_must_be_the_runs_input_size(padim, tmp_path, capsys):
    run, _, category = padim
    assert main(["predict", str(run), str(category / "test"), "--out", str(tmp_path / "p"),
                 "--tile-size", "32"]) == 2
    assert "--tile-size 32: the run scores 64x64 images" in capsys.readouterr().err


def test_test_by_tiles_of_the_whole_image_measures_what_test_measures(padim, tmp_path):
    run, _, category = padim
    untiled = runs.test(run, category, batch_size=4, progress=False).record
    tiled = runs.test(run, category, batch_size=4, tile_size=64, tile_stride=32,
                      progress=False).record  # 64 px images: one tile each
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert tiled[key] == pytest.approx(untiled[key], abs=1e-6), key
