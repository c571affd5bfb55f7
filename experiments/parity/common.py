"""Torch-side helpers of the parity scripts: fix a reference model, write its fixture.

Runs only in a throwaway venv with torch (never imports JAX or anomjax); see
``experiments/parity/README.md``. A fixture is one ``.npz`` read without pickle:

* ``weights/<torch name>``: every tensor of the reference's state dict (torch layout);
* ``grads/<torch name>``: the gradient of the reference's training loss for every parameter;
* ``stepped/<torch name>``: the parameters after one step of the reference's optimiser;
* ``inputs/<name>``, ``outputs/<name>``: the fixed inputs (every random draw of the loss
  included) and the reference's outputs;
* ``meta/reference``: repository@commit and file (or anomalib class, or "numpy") as text.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "parity"
MAX_FIXTURE_BYTES = 3 * 2**20


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the reference code draws from the global RNG)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def to_numpy(value: torch.Tensor | np.ndarray | float) -> np.ndarray:
    """A copy: ``Tensor.numpy()`` shares the tensor's memory, so the weights taken before an
    optimiser step would otherwise silently become the stepped ones."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    return np.array(value)


def nhwc(value: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` tensor -> ``[B, H, W, C]`` array (the anomjax layout)."""
    return to_numpy(value.permute(0, 2, 3, 1))


def state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The state dict as arrays, ``num_batches_tracked`` dropped."""
    return {k: to_numpy(v) for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def gradients(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> dict[str, np.ndarray]:
    """``.grad`` of every parameter that has one (call after ``loss.backward()``)."""
    return {k: to_numpy(p.grad) for k, p in named_parameters if p.grad is not None}


def save_fixture(name: str, reference: str, *, weights: Mapping[str, np.ndarray],
                 inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                 grads: Mapping[str, np.ndarray] | None = None,
                 stepped: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write ``tests/fixtures/parity/<name>.npz`` (float64 stored as float32)."""
    arrays: dict[str, np.ndarray] = {"meta/reference": np.array(reference)}
    for group, values in (("weights", weights), ("inputs", inputs), ("outputs", outputs),
                          ("grads", grads or {}), ("stepped", stepped or {})):
        for key, value in values.items():
            value = to_numpy(value)
            if value.dtype == np.float64:
                value = value.astype(np.float32)
            arrays[f"{group}/{key}"] = value
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    size = path.stat().st_size
    if size > MAX_FIXTURE_BYTES:
        raise SystemExit(f"{path} is {size / 2**20:.1f} MiB: shrink the widths or inputs "
                         f"(limit {MAX_FIXTURE_BYTES / 2**20:.0f} MiB)")
    print(f"wrote {path} ({size / 1024:.0f} KiB, {len(arrays)} arrays)")
    return path


def save_parameter_tree(name: str, reference: str, module: torch.nn.Module) -> Path:
    """Write ``tests/fixtures/parity/<name>_tree.json``: every state-dict name and shape of the
    full-width reference model, and its parameter count."""
    import json

    shapes = {k: list(v.shape) for k, v in module.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    count = sum(p.numel() for p in module.parameters())
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{name}_tree.json"
    path.write_text(json.dumps({"reference": reference, "parameter_count": count,
                                "shapes": shapes}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} ({len(shapes)} tensors, {count} parameters)")
    return path
