"""Checks and small pure helpers shared by the self-supervised and one-class methods."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from anomjax.methods.images import check_rgb


def check_images(method: str, images: Any, multiple: int = 1, min_size: int = 1) -> None:
    """A clear ``ValueError`` for anything but float ``[B, H, W, 3]`` images whose sides are
    multiples of ``multiple`` and at least ``min_size``."""
    check_rgb(method, images)
    h, w = images.shape[1:3]
    if h % multiple or w % multiple or min(h, w) < min_size:
        raise ValueError(f"{method}: image sides must be multiples of {multiple} and at least "
                         f"{min_size} pixels, got {h}x{w} (choose another --image-size)")


def mean_filter(maps: jax.Array, size: int) -> jax.Array:
    """``size x size`` mean filter of ``[B, H, W]`` maps, stride 1, zero padding of ``size //
    2`` counted in the mean (PyTorch ``avg_pool2d(size, 1, size // 2)``)."""
    pad = size // 2
    summed = jax.lax.reduce_window(maps.astype(jnp.float32), 0.0, jax.lax.add, (1, size, size),
                                   (1, 1, 1), ((0, 0), (pad, pad), (pad, pad)))
    return summed / (size * size)


def select_like(tree: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    """The entries of nested dict ``tree`` whose keys also appear in ``like`` (pruning a
    backbone's variables to the layers a call uses)."""
    return {k: select_like(tree[k], v) if isinstance(v, dict) else tree[k]
            for k, v in like.items()}


def used_backbone_variables(name: str, key: jax.Array, taps: tuple[str, ...],
                            pretrained: bool = True) -> dict[str, Any]:
    """Variables of backbone ``name`` (pretrained, or random with ``pretrained=False``), cut
    after the deepest of ``taps``; fresh copies (the training step donates the buffers of a
    state, so two states must never share an array)."""
    from anomjax.backbones import load_backbone
    from anomjax.nn.teacher import check_taps, teacher

    net = teacher(name)
    check_taps(net, taps)
    sample = jnp.zeros((1, 64, 64, 3), jnp.float32)
    used = jax.eval_shape(lambda k, x: net.module.init(k, x, taps=taps, logits=False), key,
                          sample)
    _, variables = load_backbone(name, pretrained=pretrained, key=key)
    return jax.tree.map(jnp.array, {k: select_like(variables[k], used[k]) for k in used})
