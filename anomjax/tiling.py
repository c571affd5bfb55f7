"""Score a large image by overlapping tiles of the model's input size, and blend the maps.

Pure functions over NumPy arrays (no JAX, no method code), shared by ``anomjax predict`` /
``test`` with ``--tile-size`` / ``--tile-stride`` and by the exported scorer's loader::

    origins = tile_origins((H, W), tile=(th, tw), stride=(sh, sw))   # [(top, left), ...]
    tiles = extract_tiles(image, origins[:n], (th, tw))              # [n, th, tw, C]
    blended = blend(tile_maps, origins, (H, W))                      # [H, W], mean over overlaps

The grid starts at the top-left corner and steps by the stride; where the stride does not
land on the far edge, one more row (column) of tiles is placed flush with it, so every pixel
is covered. :func:`score_tiled` runs a scorer over the tiles ``batch_size`` at a time and
accumulates their maps into one sum and one count array, so memory is bounded by one batch
of tiles plus two ``[H, W]`` arrays, whatever the number of tiles. The image score of a
tiled image is the maximum of its blended map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: ``tiles [n, th, tw, C] -> maps [n, th, tw]`` (a batch of tiles to their anomaly maps).
TileScorer = Callable[[np.ndarray], np.ndarray]


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:  # one more tile flush with the far edge
        starts.append(length - tile)
    return starts


def tile_origins(size: int | Sequence[int], tile: int | Sequence[int],
                 stride: int | Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Top-left corners ``(top, left)`` of the tiles covering an image of ``size`` (H, W),
    in row-major order. ``stride`` defaults to the tile (no overlap); a stride larger than
    the tile would leave pixels unscored and is refused, as is an image smaller than a tile.
    """
    (h, w), (th, tw) = _pair(size, "the image size"), _pair(tile, "the tile size")
    sh, sw = _pair(stride if stride is not None else (th, tw), "the tile stride")
    if th > h or tw > w:
        raise ValueError(f"the image ({h}x{w}) is smaller than a tile ({th}x{tw})")
    if sh > th or sw > tw:
        raise ValueError(f"the tile stride ({sh}x{sw}) exceeds the tile ({th}x{tw}): pixels "
                         "between tiles would not be scored")
    return [(top, left) for top in _starts(h, th, sh) for left in _starts(w, tw, sw)]


def extract_tiles(image: np.ndarray, origins: Sequence[tuple[int, int]],
                  tile: int | Sequence[int]) -> np.ndarray:
    """The tiles of ``image`` ``[H, W, ...]`` at ``origins``: ``[n, th, tw, ...]``."""
    th, tw = _pair(tile, "the tile size")
    return np.stack([image[top:top + th, left:left + tw] for top, left in origins])


def accumulate(total: np.ndarray, count: np.ndarray, tile_maps: np.ndarray,
               origins: Sequence[tuple[int, int]]) -> None:
    """Add ``tile_maps`` ``[n, th, tw]`` into ``total`` ``[H, W]`` (float64) at ``origins``
    and count the covering tiles per pixel in ``count`` ``[H, W]`` (in place)."""
    th, tw = tile_maps.shape[1:3]
    for tile_map, (top, left) in zip(tile_maps, origins, strict=True):
        total[top:top + th, left:left + tw] += tile_map
        count[top:top + th, left:left + tw] += 1


def blend(tile_maps: np.ndarray, origins: Sequence[tuple[int, int]],
          size: int | Sequence[int]) -> np.ndarray:
    """Blend ``tile_maps`` ``[n, th, tw]`` placed at ``origins`` into one ``[H, W]`` float32
    map: the mean of the tiles covering each pixel."""
    h, w = _pair(size, "the image size")
    total, count = np.zeros((h, w), np.float64), np.zeros((h, w), np.int32)
    accumulate(total, count, np.asarray(tile_maps), origins)
    if (count == 0).any():
        raise ValueError("the tiles do not cover the image")
    return (total / count).astype(np.float32)


def score_tiled(image: np.ndarray, score_tiles: TileScorer, tile: int | Sequence[int],
                stride: int | Sequence[int] | None = None, batch_size: int = 16
                ) -> tuple[np.ndarray, float]:
    """Score ``image`` ``[H, W, C]`` tile by tile: ``(blended map [H, W] float32, image
    score = its maximum)``.

    ``score_tiles`` is called on at most ``batch_size`` tiles at a time; every call gets the
    same number of tiles (the last batch is padded with copies of its last tile, whose maps
    are dropped), so a jitted scorer compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    h, w = image.shape[:2]
    th, tw = _pair(tile, "the tile size")
    origins = tile_origins((h, w), (th, tw), stride)
    per_call = min(batch_size, len(origins))
    total, count = np.zeros((h, w), np.float64), np.zeros((h, w), np.int32)
    for start in range(0, len(origins), per_call):
        chunk = origins[start:start + per_call]
        tiles = extract_tiles(image, chunk, (th, tw))
        if len(chunk) < per_call:
            tiles = np.concatenate([tiles, np.repeat(tiles[-1:], per_call - len(chunk), 0)])
        maps = np.asarray(score_tiles(tiles))
        if maps.shape != (per_call, th, tw):
            raise ValueError(f"the tile scorer returned maps {maps.shape}, expected "
                             f"{(per_call, th, tw)}")
        accumulate(total, count, maps[:len(chunk)], chunk)
    blended = (total / count).astype(np.float32)
    return blended, float(blended.max())
