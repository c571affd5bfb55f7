"""SPADE parity fixture from byungjae89/SPADE-pytorch (the widely used reference code; the
authors published none and anomalib 2.7 has no SPADE).

Reference: byungjae89/SPADE-pytorch@077c67be21d68a38b4442db7311c87e708728286, ``src/main.py``
(``main``: image kNN on the average-pooled final features, mean distance to the ``top_k``
images; per layer ``layer1-3`` the min distance to the gallery of all positions of those
images, each map upsampled bilinearly, averaged, smoothed with ``gaussian_filter(sigma=4)``).
The whole ``main()`` runs unmodified; what it imports is stubbed in its module namespace:

* ``wide_resnet50_2(pretrained=True)`` -> the seeded random torchvision ResNet-18 of
  ``feature_modeling_common`` (no download; its ``layer1-3`` and ``avgpool`` hooks as coded);
* ``datasets.mvtec``: one class ``toy`` whose dataset yields the fixed images (already
  normalised; 6 normal training images, 2 test images, the second with a bright square);
* ``F.interpolate``: a recording wrapper (the per-layer maps before upsampling) that also
  replaces the reference's hard-coded map size 224 (its loader crops to 224 px) by the input
  size, 160 px here: at 160 px every layer's gallery is a multiple of 100 positions, so its
  100-row distance chunks (``range(n // 100)``, which drops a remainder) see all of it;
* ``torch``: the module itself except ``pairwise_distance``, which gets the semantics the
  reference was written for. Until PyTorch 1.11 it reduced dimension 1 (the channels of the
  reference's ``[G, C, 1, 1]`` gallery against the ``[1, C, h, w]`` test map); since
  pytorch/pytorch#64882 it reduces the last dimension, so under torch 2.x the unmodified
  reference returns ``[C, h]`` "maps" (the width reduced instead of the channels);
* ``gaussian_filter`` and ``roc_auc_score``: recording wrappers (the averaged map before and
  after smoothing; the image scores); ``visualize_loc_result``: skipped (plots only).

``--top_k 3`` (the reference's default is 5, the paper's 50; 3 of 6 keeps the retrieval
selective). The images are stored as uint8 (both sides divide by 255).

Run: ``/tmp/venv-ref/bin/python experiments/parity/spade.py --reference-root /tmp/refs/fm``
with the repository extracted at ``<root>/byungjae89+SPADE-pytorch``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from common import save_fixture, seed_everything
from feature_modeling_common import WEIGHT_SEED, normalised, seeded_resnet18, toy_images

COMMIT = "077c67be21d68a38b4442db7311c87e708728286"
REFERENCE = f"byungjae89/SPADE-pytorch@{COMMIT} src/main.py"
SIZE = 160
TOP_K = 3


class ToyDataset(torch.utils.data.Dataset):
    """The fixed images in the reference loader's ``(x, y, mask)`` form."""

    images: dict[bool, np.ndarray] = {}

    def __init__(self, class_name: str, is_train: bool):
        self.x = normalised(self.images[is_train].astype(np.float32) / np.float32(255))
        self.y = [0] * len(self.x) if is_train else [0, 1]
        self.mask = torch.zeros(len(self.x), 1, SIZE, SIZE)
        if not is_train:
            self.mask[1, :, SIZE // 4:SIZE // 2, SIZE // 2:3 * SIZE // 4] = 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.mask[i]


class Torch110:
    """``torch`` with the pre-1.11 ``pairwise_distance`` (the p-norm over dimension 1)."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def pairwise_distance(x1: torch.Tensor, x2: torch.Tensor, p: float = 2.0,
                          eps: float = 1e-6, keepdim: bool = False) -> torch.Tensor:
        return torch.linalg.vector_norm(x1 - x2 + eps, ord=p, dim=1, keepdim=keepdim)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs/fm"))
    root = parser.parse_args().reference_root / "byungjae89+SPADE-pytorch"
    sys.path.insert(0, str(root / "src"))
    import main as spade

    seed_everything(0)
    to_u8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
    ToyDataset.images = {True: to_u8(toy_images(6, SIZE, seed=1)),
                         False: to_u8(toy_images(2, SIZE, seed=2, defect=True))}
    ToyDataset.images[False][0] = to_u8(toy_images(1, SIZE, seed=3))[0]  # a normal one
    layer_maps, averaged, smoothed, image_scores = [], [], [], []

    def interpolate(x, size, **kwargs):
        layer_maps.append(x[0, 0].numpy())
        return torch.nn.functional.interpolate(x, size=SIZE, **kwargs)

    def gaussian_filter(x, sigma):
        averaged.append(x)
        smoothed.append(spade_gaussian_filter(x, sigma=sigma))
        return smoothed[-1]

    def roc_auc_score(labels, scores):
        if not image_scores:
            image_scores.append(np.asarray(scores))
        return spade_roc_auc_score(labels, scores)

    spade_gaussian_filter, spade_roc_auc_score = spade.gaussian_filter, spade.roc_auc_score
    spade.wide_resnet50_2 = lambda pretrained, progress: seeded_resnet18()
    spade.mvtec.CLASS_NAMES = ["toy"]
    spade.mvtec.MVTecDataset = ToyDataset
    spade.F = types.SimpleNamespace(interpolate=interpolate)
    spade.torch = Torch110()
    spade.gaussian_filter, spade.roc_auc_score = gaussian_filter, roc_auc_score
    spade.visualize_loc_result = lambda *args, **kwargs: None
    with tempfile.TemporaryDirectory() as out:
        sys.argv = ["main.py", "--top_k", str(TOP_K), "--save_path", out]
        spade.main()
    outputs = {f"layer{i + 1}_distance": np.stack(layer_maps[i::3]) for i in range(3)}
    outputs.update({"averaged": np.stack(averaged), "map": np.stack(smoothed),
                    "image_score": image_scores[0]})
    save_fixture("spade", REFERENCE, weights={},
                 inputs={"train_u8": ToyDataset.images[True], "test_u8": ToyDataset.images[False],
                         "weight_seed": np.int64(WEIGHT_SEED), "top_k": np.int64(TOP_K)},
                 outputs=outputs)


if __name__ == "__main__":
    main()
