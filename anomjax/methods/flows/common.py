"""Pieces shared by the normalizing-flow methods: the frozen encoder, image pyramids and
rotations, PyTorch-style Adam, and FrEIA all-in-one flows built from a param pytree."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax._distrax import distrax
from anomjax.nn.flows import (
    all_in_one_block,
    bind,
    init_params,
    sequential,
    softplus_scale_init,
)
from anomjax.nn.teacher import check_taps, frozen_features, teacher, teacher_variables


def encoder_state(method: str, backbone: str, weights: str | None,
                  taps: Sequence[str]) -> dict[str, Any]:
    """``{"teacher": variables}`` of the frozen pretrained encoder; checks ``method``'s taps."""
    check_taps(method, backbone, taps)
    return {"teacher": teacher_variables(backbone, weights)}


def encoder_features(backbone: str, state: dict[str, Any], images: jax.Array,
                     taps: Sequence[str]) -> list[jax.Array]:
    """Frozen encoder features ``[B, h_t, w_t, c_t]`` float32 per tap, from one pass."""
    feats = frozen_features(teacher(backbone), state["frozen"]["teacher"], images, taps)
    return [f.astype(jnp.float32) for f in feats]


def feature_shapes(backbone: str, frozen: dict[str, Any], images: Any,
                   taps: Sequence[str]) -> list[jax.ShapeDtypeStruct]:
    """Shapes of :func:`encoder_features` of ``images`` without running the encoder."""
    sample = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)
    return jax.eval_shape(lambda x: encoder_features(backbone, {"frozen": frozen}, x, taps),
                          sample)


def downscale(images: jax.Array, factor: int) -> jax.Array:
    """``[B, H, W, C] -> [B, H / factor, W / factor, C]`` by nearest neighbour, as PyTorch's
    ``F.interpolate(x, size=H // factor)`` (mode ``"nearest"`` picks rows ``factor * i``)."""
    return images[:, ::factor, ::factor]


def scale_features(backbone: str, state: dict[str, Any], images: jax.Array,
                   taps: Sequence[str], scales: int) -> list[list[jax.Array]]:
    """:func:`encoder_features` of ``images`` at each scale ``s < scales`` (downscaled by
    ``2^s``, :func:`downscale`): ``[s][tap]`` ``[B, h_t / 2^s, w_t / 2^s, c_t]``."""
    return [encoder_features(backbone, state, downscale(images, 2 ** s), taps)
            for s in range(scales)]


def rotate(images: jax.Array, degrees: jax.Array, method: str = "nearest") -> jax.Array:
    """Rotate ``images [N, H, W, C]`` counter-clockwise by ``degrees [N]`` about the image
    centre, zeros outside, same size (torchvision's ``rotate(img, angle)`` with nearest
    interpolation, or bilinear with ``method="bilinear"``)."""
    if method not in ("nearest", "bilinear"):
        raise ValueError(f"rotate: method must be 'nearest' or 'bilinear', got {method!r}")
    _, h, w, _ = images.shape
    theta = jnp.deg2rad(degrees.astype(jnp.float32))[:, None, None]
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    dy, dx = yy[None] - cy, xx[None] - cx
    # the source pixel of each output pixel: rotate the output grid clockwise (y points down)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src_x = cos * dx - sin * dy + cx
    src_y = sin * dx + cos * dy + cy

    order = 0 if method == "nearest" else 1

    def sample(img: jax.Array, sy: jax.Array, sx: jax.Array) -> jax.Array:
        return jnp.stack([jax.scipy.ndimage.map_coordinates(
            img[..., c], [sy, sx], order=order, mode="constant", cval=0.0)
            for c in range(img.shape[-1])], axis=-1)

    if method == "nearest":
        src_y, src_x = jnp.round(src_y), jnp.round(src_x)
    return jax.vmap(sample)(images.astype(jnp.float32), src_y, src_x).astype(images.dtype)


def pytorch_adam(learning_rate: float | optax.Schedule, *, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                 max_grad_norm: float | None = None) -> optax.GradientTransformation:
    """``torch.optim.Adam`` (L2 weight decay added to the gradient, ``eps`` outside the
    square root), after optional global-norm gradient clipping."""
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))
    return optax.chain(*parts)


def nll_per_dim(z: jax.Array, log_det: jax.Array) -> jax.Array:
    """``(0.5 ||z||^2 - log_det) / D`` per example of ``z [N, D]`` (DifferNet's and CS-Flow's
    ``get_loss`` before the batch mean)."""
    return (0.5 * jnp.sum(jnp.square(z), axis=-1) - log_det) / z.shape[-1]


# ----------------------------------------------------------- FrEIA all-in-one flows


def init_all_in_one(key: jax.Array, subnets: Sequence[nn.Module], sample: jax.Array,
                    channels: int, context: jax.Array | None = None) -> dict[str, Any]:
    """Params ``{"block{k}": {"subnet", "scale", "offset"}}`` of an all-in-one flow.

    ``sample`` ``[..., C]`` gives the subnets' input shape (the kept half, plus ``context``).
    The global scale starts at 1 and the offset at 0 (FrEIA's defaults).
    """
    split = channels - channels // 2
    x = sample[..., :split]
    if context is not None:
        x = jnp.concatenate([x, jnp.broadcast_to(context, (*x.shape[:-1],
                                                           context.shape[-1]))], axis=-1)
    keys = jax.random.split(key, len(subnets))
    return {f"block{k}": {"subnet": init_params(net, keys[k], x),
                          "scale": jnp.full((channels,), softplus_scale_init(1.0), jnp.float32),
                          "offset": jnp.zeros((channels,), jnp.float32)}
            for k, net in enumerate(subnets)}


def all_in_one_flow(params: dict[str, Any], subnets: Sequence[nn.Module], channels: int,
                    clamp: float, mixings: Sequence[np.ndarray], *,
                    context: jax.Array | None = None, soft_permutation: bool = False,
                    event_ndims: int = 1) -> distrax.Chain:
    """The chain of all-in-one blocks of ``params`` (see :func:`init_all_in_one`)."""
    blocks = []
    for k, (net, mixing) in enumerate(zip(subnets, mixings, strict=True)):
        p = params[f"block{k}"]
        blocks += all_in_one_block(bind(net, p["subnet"]), channels, clamp,
                                   {"scale": p["scale"], "offset": p["offset"]}, mixing,
                                   context=context, soft_permutation=soft_permutation,
                                   event_ndims=event_ndims)
    return sequential(blocks)


def cosine_with_warmup(base: float, total_steps: int, warmup_share: float,
                       decay_rate: float = 0.1) -> Callable[[jax.Array], jax.Array]:
    """CFLOW-AD's schedule per step: linear warm-up from ``base / 10`` over the first
    ``warmup_share`` of the steps, then cosine decay to ``base * decay_rate ** 3``."""
    eta_min = base * decay_rate ** 3
    warm = max(int(round(warmup_share * total_steps)), 0)

    def cosine(step: jax.Array) -> jax.Array:
        progress = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
        return eta_min + (base - eta_min) * (1 + jnp.cos(math.pi * progress)) / 2

    def schedule(step: jax.Array) -> jax.Array:
        if warm == 0:
            return cosine(step)
        start, end = base / 10.0, cosine(jnp.asarray(warm))
        ramp = start + (end - start) * jnp.asarray(step, jnp.float32) / warm
        return jnp.where(step < warm, ramp, cosine(step))

    return schedule
