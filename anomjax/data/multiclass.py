"""The multi-class (unified) setting: one training split over several categories.

One model is fitted or trained on the union of several categories' normal training images
(the setting of UniAD and the ADer benchmark) and tested on each category separately.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from anomjax.data import transforms
from anomjax.data.dataset import Dataset, file_split, open_dataset


def open_multiclass(roots: Sequence[str | os.PathLike], layout: str | None = None,
                    image_size: transforms.Size | None = 256,
                    crop: transforms.Size | None = None, *, resize_dtype: str = "uint8"
                    ) -> tuple[Dataset, list[Dataset]]:
    """``(union, categories)``: a dataset whose train split is every category's training
    images (in the order of ``roots``, then each category's own order) and whose test split
    is their union, and the categories opened one by one (to test each on its own).
    ``image_size``, ``crop`` and ``resize_dtype`` as in :func:`open_dataset`.

    Raises :class:`~anomjax.data.DataError` as :func:`open_dataset` does, naming the folder,
    and ``ValueError`` for an empty or repeated list of folders.
    """
    if not roots:
        raise ValueError("the multi-class setting needs at least one category folder")
    categories = [open_dataset(root, layout=layout, image_size=image_size, crop=crop,
                               resize_dtype=resize_dtype) for root in roots]
    resolved = [str(d.root.resolve()) for d in categories]
    repeated = sorted({r for r in resolved if resolved.count(r) > 1})
    if repeated:
        raise ValueError(f"category folders given more than once: {', '.join(repeated)}")
    if len(categories) == 1:
        return categories[0], categories
    train = [s for d in categories for s in d.train.samples]
    test = [s for d in categories for s in d.test.samples]
    union = Dataset("+".join(d.name for d in categories),
                    "+".join(sorted({d.layout for d in categories})),
                    file_split(train, image_size, crop, resize_dtype),
                    file_split(test, image_size, crop, resize_dtype),
                    root=None, has_masks=all(d.has_masks for d in categories))
    return union, categories
