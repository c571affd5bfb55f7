"""Data pipeline: dataset readers, transforms, the synthetic dataset, anomaly generators.

Public API::

    ds = open_dataset(root, layout=None, image_size=256, crop=None)
    for batch in ds.train.batches(32, shuffle=True, seed=0): ...
    test = ds.test.load_all()
    print(ds.report())
"""

from anomjax.data import anomalies, synthetic, transforms
from anomjax.data.dataset import (
    Dataset,
    DatasetReport,
    Split,
    array_split,
    file_split,
    iter_image_batches,
    load_sample,
    open_dataset,
)
from anomjax.data.errors import DataError
from anomjax.data.image_io import IMAGE_EXTENSIONS, image_size, read_image, read_mask
from anomjax.data.layouts import LAYOUTS, FolderSpec, Sample, detect_layout, discover
from anomjax.data.scan import expand_image_paths, image_files
from anomjax.data.transforms import (
    NORMALIZATION_PRESETS,
    center_crop,
    denormalize,
    normalize,
    resize_image,
    resize_mask,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "NORMALIZATION_PRESETS",
    "DataError",
    "Dataset",
    "DatasetReport",
    "FolderSpec",
    "Sample",
    "Split",
    "anomalies",
    "array_split",
    "center_crop",
    "denormalize",
    "detect_layout",
    "discover",
    "expand_image_paths",
    "file_split",
    "image_files",
    "image_size",
    "iter_image_batches",
    "load_sample",
    "normalize",
    "open_dataset",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_mask",
    "synthetic",
    "transforms",
]
