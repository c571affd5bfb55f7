"""Test-side helpers of the distillation family's parity tests (``experiments/parity/
distillation_torch.py`` writes their fixtures): the seeded reference weights, and our
parameter trees in PyTorch names and layouts, to compare gradients and stepped parameters
with the first rows the fixtures keep of every reference tensor."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from parity_harness import GRADIENT_TOL, Fixture

from anomjax.backbones.convert import TORCH_LEAF_NAMES, torch_to_flax
from anomjax.backbones.seeded_weights import seeded_state_dict

ROWS = 4  # distillation_torch.ROWS


def seeded(shapes: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The reference's seeded weights (same names, shapes and seed as the fixture script)."""
    return seeded_state_dict({k: tuple(v) for k, v in shapes.items()}, seed)


def save_npz(state_dict: Mapping[str, np.ndarray], folder: Path, name: str) -> str:
    """``state_dict`` written as ``folder/name.npz`` (a ``backbone_weights`` file)."""
    path = folder / f"{name}.npz"
    np.savez(path, **state_dict)
    return str(path)


def transposed_conv_as_conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch ``ConvTranspose2d`` weight ``[I, O, kh, kw]`` -> the ``[O, I, kh, kw]`` layout
    that ``torch_to_flax`` turns into our (unflipped ``lax.conv_transpose``) kernel."""
    return np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def to_flax(template: Mapping[str, Any], state_dict: Mapping[str, np.ndarray],
            module_key: Callable[[tuple[str, ...]], str], source: str,
            transposed: Collection[str] = ()) -> dict[str, Any]:
    """``torch_to_flax`` with the transposed convolutions named in ``transposed`` re-laid."""
    state_dict = {k: transposed_conv_as_conv(v) if k in transposed else v
                  for k, v in state_dict.items()}
    return torch_to_flax(template, state_dict, module_key, source)


def to_torch(tree: Mapping[str, Any], module_key: Callable[[tuple[str, ...]], str],
             transposed: Collection[str] = ()) -> dict[str, np.ndarray]:
    """Our ``{collection: tree}`` as ``{torch name: array}`` in PyTorch layouts (the inverse of
    :func:`to_flax`)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(tree))[0]:
        names = tuple(p.key for p in path)
        key = f"{module_key(names[1:-1])}.{TORCH_LEAF_NAMES[names[-1]]}"
        value = np.asarray(leaf, np.float32)
        if key in transposed:
            value = value[::-1, ::-1].transpose(2, 3, 0, 1)
        elif value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        out[key] = value
    return out


def close_rows(fx: Fixture, what: str, group: str, ours: Mapping[str, np.ndarray],
               tol: float = GRADIENT_TOL, prefix: str = "") -> float:
    """Compare the first rows of every tensor of the fixture's ``group`` with ``ours`` (torch
    names without ``prefix``); every reference tensor must have a counterpart."""
    ref = fx.group(group, prefix)
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"{what}: no counterpart for {missing}"
    return fx.close(what, {k: np.asarray(ours[k])[:ROWS] for k in ref}, ref, tol)


def close_adam_step(fx: Fixture, what: str, ours: Mapping[str, np.ndarray],
                    reference: Mapping[str, np.ndarray], floor: float = 1e-6,
                    relative_floor: float = 1e-3) -> float:
    """Compare the first rows of our parameters after one Adam step with ``reference`` (the
    reference's first rows), on the entries whose reference gradient is at least ``floor`` and
    ``relative_floor`` times the largest of its tensor.

    Adam's first step moves each entry by ``lr g / (|g| + eps)`` (eps 1e-8): where ``|g|`` is
    within a hundred ``eps`` of zero, a float32 rounding difference of ``1e-8`` in ``g`` moves
    the entry by a sizeable part of ``lr``, and where ``g`` is within the float32 rounding of
    its tensor's largest entries of zero its sign (so the step's) is not determined either;
    so the step is compared only where it is well determined; the fraction left out is
    recorded as ``<what>: entries left out`` (at most a quarter).
    :func:`close_optimizer_trace` pins the optimiser's settings exactly.
    """
    grads = fx.group("grads")
    ours_kept, left_out, total = {}, 0, 0
    for k, ref in reference.items():
        keep = np.abs(grads[k]) >= max(floor, relative_floor * np.abs(grads[k]).max())
        ours_kept[k] = np.where(keep, np.asarray(ours[k])[:ROWS], ref)
        left_out, total = left_out + int((~keep).sum()), total + keep.size
    fx.close(f"{what}: entries left out (small |g|)", left_out / total, 0.0, 0.25)
    return fx.close(what, ours_kept, dict(reference), GRADIENT_TOL)


def close_optimizer_trace(fx: Fixture, optimizer: optax.GradientTransformation) -> float:
    """Our ``optimizer`` fed the fixture's fixed gradient sequence (``optimizer_trace``) from
    its start parameter: the parameter after every step against the reference optimiser's."""
    param = jnp.asarray(fx.input("trace_param"))
    opt_state = optimizer.init(param)
    after = []
    for g in fx.input("trace_grads"):
        updates, opt_state = optimizer.update(jnp.asarray(g), opt_state, param)
        param = optax.apply_updates(param, updates)
        after.append(param)
    return fx.close("optimiser settings (3 steps of fixed gradients)", jnp.stack(after),
                    fx.output("optimizer_trace"))


def close_adam_step_and_running_means(fx: Fixture, ours: Mapping[str, np.ndarray],
                                      stepped: Mapping[str, np.ndarray],
                                      optimizer: optax.GradientTransformation) -> None:
    """After one train step: the parameters (:func:`close_adam_step`), the BatchNorm running
    means (first rows; the running variances are biased in Flax, unbiased in PyTorch) and the
    optimiser's settings (:func:`close_optimizer_trace`), against the reference's ``stepped``."""
    params = {k: v for k, v in stepped.items()
              if not k.endswith(("running_mean", "running_var"))}
    close_adam_step(fx, "Adam step (params)", ours, params)
    means = {k: v for k, v in stepped.items() if k.endswith("running_mean")}
    fx.close("running means after the step", {k: ours[k][:ROWS] for k in means}, means)
    close_optimizer_trace(fx, optimizer)
