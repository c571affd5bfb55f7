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

from anomjax.backbones import WeightsNotFoundError, load_backbone


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


def check_taps(backbone: Any, taps: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the valid taps when one of ``taps`` is unknown."""
    unknown = [t for t in taps if t not in backbone.taps]
    if unknown or not taps:
        raise ValueError(f"backbone {backbone.name!r} has no feature tap(s) "
                         f"{unknown or '(none given)'}; its taps are {list(backbone.taps)}")


def frozen_features(backbone: Any, variables: Any, images: jax.Array,
                    taps: Sequence[str]) -> list[jax.Array]:
    """Teacher features ``[B, h_t, w_t, c_t]`` for each tap in order; no gradient reaches the
    teacher's variables (gradients with respect to ``images`` still flow)."""
    feats = backbone.features(jax.lax.stop_gradient(variables), images, taps=tuple(taps))
    return [feats[t] for t in taps]
