"""A frozen pretrained backbone used as teacher or feature extractor by trainable methods.

The trainable methods keep the backbone's variables in their state under
``state["frozen"]["teacher"]`` (a checkpoint is self-contained, and features are a pure function
of the state); the architecture object is rebuilt from its name and cached per process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from anomjax.backbones import WeightsNotFoundError, get_backbone, load_backbone


@functools.cache
def teacher(name: str) -> Any:
    """The backbone architecture ``name`` (``.features``, ``.taps``), built once per process.

    Built from the locally available pretrained weights when there are some (reading the
    converted-weights cache is much cheaper than a random initialisation); the variables are
    not kept here.
    """
    try:
        backbone, _ = load_backbone(name)
    except WeightsNotFoundError:
        backbone, _ = load_backbone(name, pretrained=False, key=jax.random.PRNGKey(0))
    return backbone


def teacher_variables(name: str, weights: str | None) -> dict[str, Any]:
    """Pretrained variables of backbone ``name`` (bundled, or the user's ``weights`` file)."""
    _, variables = load_backbone(name, weights)
    return variables


def check_taps(method: str, backbone: str, taps: Sequence[str], count: int | None = None,
               field: str = "taps") -> tuple[str, ...]:
    """``taps`` as a tuple if they exist on backbone ``backbone`` and are distinct and ordered
    fine to coarse (non-decreasing strides), else a ``ValueError`` naming ``method``'s
    hyper-parameter ``field`` and the valid taps; ``count``: how many taps it must name."""
    taps = tuple(taps)
    available = get_backbone(backbone).taps
    unknown = [t for t in taps if t not in available]
    if unknown or not taps:
        raise ValueError(f"{method}: hyper-parameter {field}={taps!r}: {backbone} has no tap(s) "
                         f"{unknown or '(none given)'}; available: {', '.join(available)}")
    if count is not None and len(taps) != count:
        raise ValueError(f"{method}: hyper-parameter {field}={taps!r} must name {count} taps")
    strides = [available[t].stride for t in taps]
    if strides != sorted(strides) or len(set(taps)) != len(taps):
        raise ValueError(f"{method}: hyper-parameter {field}={taps!r} must be distinct taps "
                         f"ordered fine to coarse (shallow to deep); their strides are {strides}")
    return taps


def select_like(tree: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    """The entries of nested dict ``tree`` whose keys also appear in ``like``."""
    return {k: select_like(tree[k], v) if isinstance(v, dict) else tree[k]
            for k, v in like.items()}


def tap_variables(name: str, variables: dict[str, Any], taps: Sequence[str]) -> dict[str, Any]:
    """``variables`` of backbone ``name`` cut after the deepest of ``taps`` (the layers that
    :func:`frozen_features` runs for them), as fresh copies: the training step donates the
    buffers of a state, so two states must never share an array."""
    net = teacher(name)
    used = jax.eval_shape(lambda k, x: net.module.init(k, x, taps=tuple(taps), logits=False),
                          jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    return jax.tree.map(jnp.array, select_like(variables, used))


def frozen_features(backbone: Any, variables: Any, images: jax.Array,
                    taps: Sequence[str]) -> list[jax.Array]:
    """Teacher features ``[B, h_t, w_t, c_t]`` for each tap in order; no gradient reaches the
    teacher's variables (gradients with respect to ``images`` still flow)."""
    feats = backbone.features(jax.lax.stop_gradient(variables), images, taps=tuple(taps))
    return [feats[t] for t in taps]


def post_relu_taps(choice: str, backbone: str) -> bool:
    """Whether a network that reproduces ``backbone``'s taps should end them in a ReLU:
    ``choice`` ``"on"`` / ``"off"``, or ``"auto"``: on for the ResNets (and VGG, the papers'
    backbones), whose taps follow a ReLU; off for EfficientNet-Lite, whose taps can be
    negative."""
    if choice != "auto":
        return choice == "on"
    return backbone.startswith(("resnet", "wide_resnet"))
