"""TensorFlow Datasets builders for MVTec AD and BTAD, reading from ``manual_dir``.

TFDS is the ``[tfds]`` extra and is imported only when a builder is asked for, so anomjax
imports without TensorFlow. The datasets cannot be downloaded automatically (their
licences require accepting terms), so each builder reads the extracted archive from
``manual_dir``: ``<manual_dir>/<category>/`` in the dataset's own layout, one
BuilderConfig per category. Nothing touches the network.

Each example has ``image`` ``[H, W, 3]`` uint8 (native size; grayscale replicated),
``mask`` ``[H, W, 1]`` uint8 in ``{0, 1}``, ``label`` (0 good, 1 defective),
``defect_type`` and ``path`` (relative to the category folder). Splits: ``train``, ``test``.

    builder = prepare_builder("mvtec_ad", "bottle", manual_dir="~/mvtec", data_dir="~/tfds")
    ds = builder.as_dataset(split="test")
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from anomjax.data.dataset import load_sample
from anomjax.data.errors import DataError
from anomjax.data.layouts import discover

MVTEC_AD_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                       "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                       "zipper")
BTAD_CATEGORIES = ("01", "02", "03")

_DATASETS = {  # name: (layout, title, an example category, categories)
    "mvtec_ad": ("mvtec", "MVTec AD", "bottle", MVTEC_AD_CATEGORIES),  # Bergmann et al. 2019
    "btad": ("btad", "BTAD product", "01", BTAD_CATEGORIES),  # Mishra et al. 2021
}

_INSTRUCTIONS = """\
Download and extract the dataset yourself (its licence requires accepting terms), then
pass the folder that holds one sub-folder per category as manual_dir, e.g.
<manual_dir>/{example}/train/... .
"""


def _tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError("TFDS builders need the [tfds] extra: pip install 'anomjax[tfds]'"
                          ) from err
    return tfds


@functools.cache
def _builder_classes() -> dict[str, type]:
    """Define the builder classes (once, after importing TFDS)."""
    tfds = _tfds()

    class _CategoryBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """One category of an anomaly-detection dataset, from ``manual_dir/<category>``."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Initial release."}
        LAYOUT = ""

        def _info(self) -> Any:
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["good", "defective"]),
                "defect_type": tfds.features.Text(),
                "path": tfds.features.Text(),
            })
            return self.dataset_info_from_configs(features=features,
                                                  supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            root = Path(dl_manager.manual_dir) / self.builder_config.name
            if not root.is_dir():
                raise DataError(f"{root}: category folder not found in manual_dir")
            _, train, test = discover(root, self.LAYOUT)
            return {"train": self._generate_examples(root, train),
                    "test": self._generate_examples(root, test)}

        def _generate_examples(self, root: Path, samples: list) -> Any:
            for sample in samples:
                image, mask = load_sample(sample, None, None)
                key = str(Path(sample.path).relative_to(root))
                yield key, {
                    "image": np.round(image * 255).astype(np.uint8),
                    "mask": mask[:, :, None],
                    "label": sample.label,
                    "defect_type": sample.defect_type,
                    "path": key,
                }

    def category_builder(dataset: str, layout: str, title: str, example: str,
                         categories: tuple[str, ...]) -> type:
        class Builder(_CategoryBuilder, skip_registration=True):
            name = dataset
            LAYOUT = layout
            MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(example=example)
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c, description=f"{title} {c}")
                               for c in categories]

        Builder.__doc__ = f"{title}, one config per category, from ``manual_dir/<category>``."
        return Builder

    return {name: category_builder(name, *spec) for name, spec in _DATASETS.items()}


def builder_names() -> tuple[str, ...]:
    """Names of the datasets that have a builder."""
    return tuple(_DATASETS)


def get_builder(dataset: str, category: str, *, data_dir: str | os.PathLike) -> Any:
    """The TFDS builder of ``dataset``'s ``category``, storing its records in ``data_dir``.

    Categories beyond the published ones (e.g. a synthetic category written with
    :func:`anomjax.data.synthetic.write_mvtec`) get a config of their own name.
    """
    classes = _builder_classes()
    if dataset not in classes:
        raise ValueError(f"no TFDS builder for {dataset!r}; known: {', '.join(classes)}")
    cls = classes[dataset]
    known = {c.name for c in cls.BUILDER_CONFIGS}
    config = category if category in known else _tfds().core.BuilderConfig(
        name=category, description=f"{dataset} {category}")
    return cls(config=config, data_dir=os.fspath(Path(data_dir).expanduser()))


def prepare_builder(dataset: str, category: str, *, manual_dir: str | os.PathLike,
                    data_dir: str | os.PathLike) -> Any:
    """Build ``dataset``/``category`` from ``manual_dir`` into ``data_dir`` (no network) and
    return the prepared builder (``builder.as_dataset(split="train" | "test")``)."""
    tfds = _tfds()
    builder = get_builder(dataset, category, data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(Path(manual_dir).expanduser()))
    builder.download_and_prepare(download_config=config)
    return builder
