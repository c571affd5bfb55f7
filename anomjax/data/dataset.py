"""Datasets as train/test splits that stream batches (:class:`~anomjax.types.Batch`).

Decoding runs in a thread pool (Pillow releases the GIL) with a bounded number of images
in flight. A split read from files keeps each image it prepared (decoded, resized,
cropped; 8-bit where ``resize_dtype="uint8"``, a quarter of float32) in a RAM cache of at
most ``$ANOMJAX_DATA_CACHE_MB`` MiB (default 2048) per split, so later epochs and scoring
passes skip decoding; past the bound the remaining images are decoded at every pass (a
warning says so once). The cache returns exactly the arrays a decode would. The order is
deterministic; shuffling is a permutation seeded by ``(seed, epoch)``; ``shard_index`` /
``num_shards`` let each host of a multi-host job read only its own shard.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from anomjax.data import transforms
from anomjax.data.errors import DataError
from anomjax.data.image_io import image_size as header_size
from anomjax.data.image_io import read_image, read_mask
from anomjax.data.layouts import GOOD, FolderSpec, Sample, discover
from anomjax.types import Batch

#: ``index -> (image [H, W, 3] float32 in [0, 1], mask [H, W] uint8)``.
Loader = Callable[[int], tuple[np.ndarray, np.ndarray]]
#: ``index -> mask [H, W] uint8`` at native resolution, checked against its image's size.
MaskReader = Callable[[int], np.ndarray]


def load_sample(sample: Sample, image_size: transforms.Size | None,
                crop: transforms.Size | None, resize_dtype: str = "uint8"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Read, resize and crop one sample: ``(image [H, W, 3] float32, mask [H, W] uint8)``.

    ``resize_dtype`` as in :func:`anomjax.data.transforms.prepare`.

    Raises :class:`DataError` when the mask's size differs from its image's.
    """
    image, mask = _prepared(sample, image_size, crop, resize_dtype)
    return transforms.to_float(image), mask


def _prepared(sample: Sample, image_size: transforms.Size | None,
              crop: transforms.Size | None, resize_dtype: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_sample` before the conversion to float (uint8 on the 8-bit path)."""
    image = read_image(sample.path)
    if sample.mask_path is not None:
        mask = read_mask(sample.mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) "
                            f"but its image {sample.path} is {image.shape[1]}x{image.shape[0]}")
    else:
        mask = np.zeros(image.shape[:2], np.uint8)
    return transforms.prepare(image, mask, image_size, crop, resize_dtype, as_float=False)


def _checked_mask(sample: Sample) -> np.ndarray:
    """The native-resolution mask of ``sample``, checked against its image header."""
    mask = read_mask(sample.mask_path)
    h, w = header_size(sample.path)
    if mask.shape != (h, w):
        raise DataError(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) "
                        f"but its image {sample.path} is {w}x{h}")
    return mask


def _stack(items: list[tuple[np.ndarray, np.ndarray]], samples: list[Sample]) -> Batch:
    shape = items[0][0].shape
    for (image, _), sample in zip(items, samples, strict=True):
        if image.shape != shape:
            raise DataError(f"{sample.path}: image is {image.shape[:2]} but the batch's first "
                            f"image is {shape[:2]}; pass image_size to resize all images")
    return Batch(
        images=np.stack([it[0] for it in items]).astype(np.float32, copy=False),
        labels=np.asarray([s.label for s in samples], np.int32),
        masks=np.stack([it[1] for it in items]).astype(np.uint8, copy=False),
        paths=tuple(s.path for s in samples),
        defect_types=tuple(s.defect_type for s in samples),
    )


class Split:
    """One split (train or test): its samples and how to stream them as batches."""

    def __init__(self, samples: Sequence[Sample], loader: Loader, mask_reader: MaskReader):
        self.samples: tuple[Sample, ...] = tuple(samples)
        self._loader = loader
        self._mask_reader = mask_reader

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"Split({len(self)} samples)"

    def read_mask(self, index: int) -> np.ndarray:
        """The mask ``[H, W]`` uint8 of sample ``index`` at its native resolution, checked
        against its image's size (not resized or cropped)."""
        return self._mask_reader(index)

    def order(self, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              shard_index: int = 0, num_shards: int = 1, drop_remainder: bool = False
              ) -> np.ndarray:
        """Sample indices this shard reads, in reading order.

        All shards share one permutation (seeded by ``(seed, epoch)``) and take every
        ``num_shards``-th index from ``shard_index``; with ``drop_remainder`` every shard
        gets the same number of samples.
        """
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, "
                             f"{num_shards}")
        n = len(self)
        idx = (np.random.default_rng((seed, epoch)).permutation(n) if shuffle
               else np.arange(n))
        shard = idx[shard_index::num_shards]
        if drop_remainder:
            shard = shard[: n // num_shards]
        return shard

    def batches(self, batch_size: int = 32, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 4, drop_remainder: bool = False, shard_index: int = 0,
                num_shards: int = 1, epoch: int = 0) -> Iterator[Batch]:
        """Stream this shard as batches of ``batch_size`` (the last one smaller unless
        ``drop_remainder``), decoding with ``num_workers`` threads (0 = in this thread)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = self.order(shuffle=shuffle, seed=seed, epoch=epoch, shard_index=shard_index,
                           num_shards=num_shards, drop_remainder=drop_remainder)
        n_batches = len(order) // batch_size if drop_remainder else -(-len(order) // batch_size)
        order = order[: n_batches * batch_size]
        items: list[tuple[np.ndarray, np.ndarray]] = []
        samples: list[Sample] = []
        for i, item in zip(order, self._load_in_order(order, num_workers, 2 * batch_size),
                           strict=True):
            items.append(item)
            samples.append(self.samples[i])
            if len(items) == batch_size:
                yield _stack(items, samples)
                items, samples = [], []
        if items:
            yield _stack(items, samples)

    def load_all(self, num_workers: int = 4) -> Batch:
        """The whole split as one batch (in dataset order)."""
        if not self.samples:
            raise DataError("cannot load an empty split")
        order = np.arange(len(self))
        items = list(self._load_in_order(order, num_workers, 64))
        return _stack(items, list(self.samples))

    def _load_in_order(self, order: Iterable[int], num_workers: int,
                       max_in_flight: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if num_workers <= 0:
            yield from (self._loader(int(i)) for i in order)
            return
        pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="anomjax-data")
        pending: collections.deque[Future] = collections.deque()
        try:
            for i in order:
                pending.append(pool.submit(self._loader, int(i)))
                if len(pending) >= max(max_in_flight, num_workers):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class DatasetReport:
    """Counts of a dataset, and the defective images whose mask is empty.

    Attributes:
      name, layout: the dataset's name and layout.
      n_train, n_test: numbers of images.
      test_counts: ``defect type -> number of test images`` (``"good"`` included).
      n_masks: number of defective test images with a mask.
      empty_masks: paths of defective images whose mask has no defect pixel (they are kept).
    """

    name: str
    layout: str
    n_train: int
    n_test: int
    test_counts: dict[str, int]
    n_masks: int
    empty_masks: tuple[str, ...]

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.test_counts.items())
        lines = [f"{self.name} ({self.layout}): {self.n_train} train, {self.n_test} test "
                 f"({counts}), {self.n_masks} masks"]
        if self.empty_masks:
            lines.append(f"{len(self.empty_masks)} defective images have an empty mask (kept):")
            lines += [f"  {p}" for p in self.empty_masks]
        return "\n".join(lines)


class Dataset:
    """A category: ``.train`` and ``.test`` splits, ``.name``, ``.layout``, ``.root``.

    ``has_masks`` is ``False`` only for a ``folder`` dataset without a mask directory, whose
    defective images then carry all-zero masks (pixel metrics are meaningless there).
    """

    def __init__(self, name: str, layout: str, train: Split, test: Split,
                 root: Path | None = None, has_masks: bool = True):
        self.name = name
        self.layout = layout
        self.train = train
        self.test = test
        self.root = root
        self.has_masks = has_masks

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, layout={self.layout!r}, train={len(self.train)}, "
                f"test={len(self.test)})")

    def report(self, num_workers: int = 4) -> DatasetReport:
        """Read every test mask (checking its size against its image) and count the dataset."""
        test_counts = dict(collections.Counter(s.defect_type for s in self.test.samples))
        test_counts = {k: test_counts[k] for k in sorted(test_counts, key=lambda k: (k != GOOD, k))}
        masked = [i for i, s in enumerate(self.test.samples) if s.label == 1
                  and (s.mask_path is not None or self.has_masks)]
        with ThreadPoolExecutor(max_workers=max(num_workers, 1)) as pool:
            empty = list(pool.map(lambda i: not self.test.read_mask(i).any(), masked))
        return DatasetReport(
            name=self.name, layout=self.layout, n_train=len(self.train), n_test=len(self.test),
            test_counts=test_counts, n_masks=len(masked),
            empty_masks=tuple(self.test.samples[i].path for i, e in zip(masked, empty,
                                                                         strict=True) if e))


def file_split(samples: Sequence[Sample], image_size: transforms.Size | None,
               crop: transforms.Size | None, resize_dtype: str = "uint8",
               cache_mb: float | None = None) -> Split:
    """A :class:`Split` that decodes ``samples`` from disk (see :func:`load_sample`), keeping
    the prepared images in a RAM cache of ``cache_mb`` MiB (default
    ``$ANOMJAX_DATA_CACHE_MB`` or 2048; 0: none)."""
    samples = tuple(samples)
    transforms.check_resize_dtype(resize_dtype)
    if cache_mb is None:
        cache_mb = float(os.environ.get("ANOMJAX_DATA_CACHE_MB", 2048))
    cache = PreparedCache(lambda i: _prepared(samples[i], image_size, crop, resize_dtype),
                          limit_bytes=int(cache_mb * 2**20))
    return Split(samples, cache.load, lambda i: _checked_mask(samples[i]))


class PreparedCache:
    """Prepared images (and masks) kept in RAM up to ``limit_bytes``, by sample index.

    ``load(i)`` gives ``(image [H, W, 3] float32 in [0, 1], mask [H, W] uint8)``, the same
    arrays as decoding: the cache holds what preparation made before the float conversion.
    """

    def __init__(self, prepare: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 limit_bytes: int):
        self.prepare, self.limit_bytes = prepare, limit_bytes
        self.items: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.nbytes, self.full = 0, False
        self.lock = threading.Lock()

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.items.get(index)
        if item is None:
            item = self.prepare(index)
            size = item[0].nbytes + item[1].nbytes
            with self.lock:
                if self.nbytes + size <= self.limit_bytes:
                    self.items[index] = item
                    self.nbytes += size
                elif not self.full and self.limit_bytes > 0:
                    self.full = True
                    warnings.warn(f"the prepared images exceed the data cache of "
                                  f"{self.limit_bytes / 2**20:.0f} MiB "
                                  "($ANOMJAX_DATA_CACHE_MB): the rest are decoded at every "
                                  "pass", stacklevel=2)
        return transforms.to_float(item[0]), item[1]


def array_split(samples: Sequence[Sample], images: np.ndarray, masks: np.ndarray) -> Split:
    """A :class:`Split` over in-memory ``images`` ``[N, H, W, 3]`` and ``masks`` ``[N, H, W]``."""
    if not len(samples) == len(images) == len(masks):
        raise ValueError(f"{len(samples)} samples, {len(images)} images, {len(masks)} masks")
    return Split(samples, lambda i: (images[i], masks[i]), lambda i: masks[i])


def open_dataset(root: str | os.PathLike, layout: str | None = None,
                 image_size: transforms.Size | None = 256, crop: transforms.Size | None = None,
                 *, folder: FolderSpec | None = None, resize_dtype: str = "uint8") -> Dataset:
    """Open the category folder ``root`` (layout detected unless named).

    Images are resized to ``image_size`` (``N`` -> ``N x N``; ``None`` keeps native sizes),
    then centre-cropped to ``crop``; masks follow by nearest neighbour. ``resize_dtype``:
    ``"uint8"`` resizes the 8-bit image (the authors' PIL pipelines), ``"float32"`` its
    ``[0, 1]`` floats without rounding (torchvision on tensors, anomalib); see
    :mod:`anomjax.data.transforms`. ``folder``
    configures the ``folder`` layout. Raises :class:`DataError` for a missing or unknown
    folder, an empty training set, or a defective image without a mask.
    """
    root = Path(root)
    if image_size is not None:
        transforms.as_hw(image_size)
    if crop is not None:
        ch, cw = transforms.as_hw(crop)
        if image_size is not None and (ch > transforms.as_hw(image_size)[0]
                                       or cw > transforms.as_hw(image_size)[1]):
            raise ValueError(f"crop {crop} is larger than image_size {image_size}")
    layout, train, test = discover(root, layout, folder)
    has_masks = not (layout == "folder" and (folder or FolderSpec()).mask is None)
    return Dataset(root.resolve().name, layout,
                   file_split(train, image_size, crop, resize_dtype),
                   file_split(test, image_size, crop, resize_dtype), root=root,
                   has_masks=has_masks)


def iter_image_batches(paths: Sequence[str | os.PathLike], batch_size: int,
                       image_size: transforms.Size | None, crop: transforms.Size | None = None,
                       num_workers: int = 4, resize_dtype: str = "uint8"
                       ) -> Iterator[tuple[np.ndarray, tuple[str, ...]]]:
    """Stream arbitrary image files as ``(images [B, H, W, 3] float32 in [0, 1], paths)``,
    prepared as :func:`open_dataset` prepares a dataset's images."""
    samples = [Sample(str(p), 0, None, GOOD) for p in paths]
    split = file_split(samples, image_size, crop, resize_dtype)
    for batch in split.batches(batch_size, num_workers=num_workers):
        yield batch.images, batch.paths
