"""Torch-side pieces shared by the feature-modeling parity scripts (PaDiM, semi-orthogonal
PaDiM, PatchCore, SPADE).

The references run on their own backbone (torchvision ResNet-18) with seeded random weights:
``anomjax/backbones/seeded_weights.py`` (NumPy only) is imported by path, so the fixture
holds the seed instead of 11 M weights and the test regenerates the identical state dict
(the backbone taps are compared first, which proves it). Never imports JAX or anomjax.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
import torchvision
from common import REPO

WEIGHT_SEED = 20261207
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def seeded_state_dict(seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """The seeded weights of the whole torchvision ResNet-18 state dict (``fc`` included:
    the draws run in sorted-name order, so a subset must be taken after drawing)."""
    model = torchvision.models.resnet18(weights=None)
    spec = importlib.util.spec_from_file_location(
        "seeded_weights", REPO / "anomjax" / "backbones" / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    return {k: torch.from_numpy(v) for k, v in module.seeded_state_dict(shapes, seed).items()}


def seeded_resnet18(seed: int = WEIGHT_SEED) -> torch.nn.Module:
    """torchvision ResNet-18 in eval mode with the seeded weights."""
    model = torchvision.models.resnet18(weights=None)
    missing, unexpected = model.load_state_dict(seeded_state_dict(seed), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model.eval()


def toy_images(n: int, size: int, seed: int, defect: bool = False, cell: int = 8) -> np.ndarray:
    """``[n, size, size, 3]`` float32 in [0, 1] (multiples of 1/255): blocky colour noise
    (``cell`` px blocks) plus fine noise; ``defect`` paints a bright square."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.3, 0.7, (n, size // cell, size // cell, 3))
    images = np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)
    images = images + rng.normal(0.0, 0.05, images.shape)
    if defect:
        side = size // 4
        images[:, side:2 * side, 2 * side:3 * side] = (0.95, 0.2, 0.1)
    return (np.round(np.clip(images, 0.0, 1.0) * 255) / 255).astype(np.float32)


def normalised(images: np.ndarray) -> torch.Tensor:
    """NHWC [0, 1] images -> NCHW ImageNet-normalised tensor (what the references consume;
    anomjax normalises inside the backbone)."""
    x = (images - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
