"""Test-side pieces shared by the feature-modeling parity tests: the seeded reference backbone
and in-memory batches.

The fixtures (``experiments/parity/{padim,so_padim,patchcore,spade}.py``) store the seed of
the references' random ResNet-18 weights, not the weights; :func:`seeded_resnet18` draws the
same state dict (``anomjax.backbones.seeded_weights``) and converts it with the public
``variables_from_state_dict``. Every test compares the backbone taps first, which proves the
two networks hold the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from anomjax.backbones import torch_state_dict_shapes, variables_from_state_dict
from anomjax.backbones.seeded_weights import seeded_state_dict
from anomjax.types import Batch


def seeded_resnet18(seed: int) -> dict[str, Any]:
    """Flax variables of ResNet-18 with the fixture's seeded weights."""
    state = seeded_state_dict(torch_state_dict_shapes("resnet18"), int(seed))
    return variables_from_state_dict("resnet18", state, f"seeded resnet18 ({seed})")


def seeded_weights_file(folder: Path, seed: int) -> str:
    """The seeded ResNet-18 state dict written as ``folder/resnet18.safetensors`` (a user
    weights file: the methods' ``backbone_weights``, read by their real ``fit``)."""
    path = folder / "resnet18.safetensors"
    save_file(seeded_state_dict(torch_state_dict_shapes("resnet18"), int(seed)), str(path))
    return str(path)


def batch_of(images: np.ndarray) -> Batch:
    """A batch of normal images ``[B, H, W, 3]``."""
    n, h, w = images.shape[:3]
    return Batch(images=images, labels=np.zeros(n, np.int32), masks=np.zeros((n, h, w), np.uint8),
                 paths=tuple(f"{i}.png" for i in range(n)), defect_types=("good",) * n)
