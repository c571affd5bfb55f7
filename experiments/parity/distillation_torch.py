"""Torch-side helpers shared by the distillation family's parity scripts (never imports JAX).

The distillation references use ResNet-18-sized networks whose weights, gradients and
stepped parameters would not fit a fixture, so these scripts draw every network's weights
with ``anomjax/backbones/seeded_weights.py`` (NumPy only, imported by path, as
``experiments/make_backbone_fixtures.py`` does): the tests draw the same tensors from the
same names, shapes and seed. Gradients and stepped parameters are stored as the first
``ROWS`` rows (output channels; input channels of a transposed convolution) of every tensor,
so every parameter tensor is compared, on a slice.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
ROWS = 4
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def seeded_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """``anomjax.backbones.seeded_weights.seeded_state_dict`` (loaded by path: NumPy only)."""
    spec = importlib.util.spec_from_file_location(
        "seeded_weights", REPO / "anomjax" / "backbones" / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeded_state_dict(shapes, seed)


def load_seeded(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every tensor of ``module``'s state dict with seeded random values."""
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    weights = seeded_state_dict(shapes, seed)
    missing, unexpected = module.load_state_dict(
        {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


def rows(values: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """The first ``ROWS`` rows of every tensor (all of it when it has fewer)."""
    out = {}
    for k, v in values.items():
        v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        out[k] = v[:ROWS]
    return out


def imagenet_normalised(images: np.ndarray) -> torch.Tensor:
    """``[B, H, W, 3]`` in [0, 1] -> ``[B, 3, H, W]`` ImageNet-normalised (our backbones
    normalise inside, the references expect normalised input)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def add_to_path(folder: Path) -> None:
    """Make a reference repository's modules importable (read-only snapshot under /tmp/refs)."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: extract the reference there (see the docstring)")
    sys.path.insert(0, str(folder))


def sample_images(seed: int, count: int = 2, size: int = 64) -> np.ndarray:
    """``[count, size, size, 3]`` float32 in [0, 1]: smooth random images."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, size // 8, size // 8, 3), dtype=np.float32)
    fine = rng.random((count, size, size, 3), dtype=np.float32)
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    return (0.7 * smooth + 0.3 * fine).astype(np.float32)


def optimizer_trace(make: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                    steps: int = 3, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """A reference optimiser's settings, pinned: ``{"param": [size], "grads": [steps, size],
    "after": [steps, size]}``, the parameter after each step of ``make([param])`` fed the
    fixed gradients (magnitudes spread over 1e-4..1, so that ``eps`` stays negligible)."""
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(size).astype(np.float32)
    grads = (rng.standard_normal((steps, size)) * 10.0 ** rng.uniform(-4, 0, (steps, size))
             ).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = make([param])
    after = []
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        optimizer.step()
        after.append(param.detach().numpy().copy())
    return {"trace_param": start, "trace_grads": grads, "after": np.stack(after)}
