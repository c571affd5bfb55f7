"""Test-side helpers of the parity tests: read a reference fixture, map its weights, compare.

A fixture (``tests/fixtures/parity/<method>.npz``, written by ``experiments/parity/``) holds a
reference implementation's weights, inputs and outputs. ``Fixture.variables`` fills one of
our parameter trees from the reference tensors through a checked key mapping (every
reference tensor used exactly once, every shape equal: ``torch_to_flax``), and ``close``
compares an output with the reference by the relative error
``max |ours - ref| / max |ref|`` (a scale-free bound over the whole array, so a zero entry
cannot inflate it) and records it: with ``ANOMJAX_PARITY_REPORT=<file.jsonl>`` set, every
comparison is appended there, which is where ``experiments/PARITY.md``'s errors come from.

Methods whose maps are smoothed are built with ``sigma_side=0`` here: the references blur
with their sigma in pixels of the fixture's small images, which is our ``sigma`` held fixed
at every size (the default scales it from the authors' image side).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from anomjax.backbones.convert import torch_to_flax

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
FORWARD_TOL = 1e-4
GRADIENT_TOL = 1e-3


def relative_error(ours: Any, ref: Any) -> float:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"shape {ours.shape} != reference {ref.shape}")
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    diff = np.max(np.abs(ours - ref)) if ref.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


class Fixture:
    """One reference fixture. ``method`` names the rows of the parity report."""

    def __init__(self, method: str, name: str | None = None):
        self.method = method
        self.path = FIXTURES / f"{name or method}.npz"
        with np.load(self.path, allow_pickle=False) as data:
            self.arrays = {k: data[k] for k in data.files}
        self.reference = str(self.arrays.get("meta/reference", ""))

    def group(self, name: str, prefix: str = "") -> dict[str, np.ndarray]:
        """``{key: array}`` of one group (``weights``, ``grads``, ``stepped``, ...), keys
        under ``prefix`` with the prefix removed."""
        head = f"{name}/{prefix}"
        return {k[len(head):]: v for k, v in self.arrays.items() if k.startswith(head)}

    def input(self, key: str) -> np.ndarray:
        return self.arrays[f"inputs/{key}"]

    def output(self, key: str) -> np.ndarray:
        return self.arrays[f"outputs/{key}"]

    def variables(self, template: Mapping[str, Any], module_key: Callable[[tuple[str, ...]], str],
                  group: str = "weights", prefix: str = "") -> dict[str, Any]:
        """``template``'s tree filled from the reference tensors of ``group`` under ``prefix``
        (conv kernels and linear matrices transposed to the Flax layout); raises naming
        every missing, unused or mis-shaped tensor."""
        return torch_to_flax(template, self.group(group, prefix), module_key,
                             f"{self.path.name}:{group}/{prefix}")

    def close(self, what: str, ours: Any, ref: Any, tol: float = FORWARD_TOL) -> float:
        """Assert ``relative_error(ours, ref) <= tol`` for a leaf or a whole pytree (the worst
        leaf), record it, and return it."""
        ours_leaves, ours_def = jax.tree_util.tree_flatten(ours)
        ref_leaves, ref_def = jax.tree_util.tree_flatten(ref)
        if ours_def != ref_def:
            raise AssertionError(f"{self.method} {what}: tree {ours_def} != reference {ref_def}")
        errors = [relative_error(a, b) for a, b in zip(ours_leaves, ref_leaves, strict=True)]
        worst = max(errors) if errors else 0.0
        _record(self.method, what, worst, tol, self.reference)
        assert worst <= tol, (f"{self.method} {what}: relative error {worst:.3g} > {tol:g} "
                              f"against {self.reference}")
        return worst


def _record(method: str, what: str, error: float, tol: float, reference: str) -> None:
    report = os.environ.get("ANOMJAX_PARITY_REPORT")
    if not report:
        return
    with open(report, "a") as f:
        f.write(json.dumps({"method": method, "what": what, "error": error, "tol": tol,
                            "reference": reference}) + "\n")


def parameter_tree(name: str) -> dict[str, Any]:
    """The full-width reference's state-dict names, shapes and parameter count."""
    return json.loads((FIXTURES / f"{name}_tree.json").read_text())
