"""Random backbone variables with the papers' initialisers, from two RNG draws.

Flax's ``module.init`` makes one RNG call per parameter, and XLA on CPU compiles each
threefry call slowly (tens of seconds for a whole EfficientNet). Here all convolution
kernels come from one normal draw and all dense kernels from one uniform draw, sliced and
scaled per tensor, so initialisation costs about one small compilation.

Distributions: convolution kernels ``[kh, kw, in/groups, out]`` ~ N(0, 2 / fan_out) with
``fan_out = kh * kw * out / groups`` (He/Kaiming fan-out, used by both the TF EfficientNet and
torchvision ResNet; a depthwise kernel ``[kh, kw, 1, C]`` has ``groups = C``, so its fan-out is
``kh * kw`` as in TF's and timm's initialisers); dense kernels ~ U(-1/sqrt(fan),
1/sqrt(fan)); biases and BN shifts 0, BN scales 1, running means 0 and running variances 1.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(template: Any, key: jax.Array, dense_fan: str = "out") -> Any:
    """Variables shaped like ``template`` (a pytree of ``ShapeDtypeStruct``) drawn from ``key``.

    Args:
      dense_fan: ``"out"`` (TF EfficientNet's dense initialiser) or ``"in"`` (PyTorch's).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [path[-1].key for path, _ in flat]
    depthwise = [any("depthwise" in str(getattr(p, "key", "")) for p in path) for path, _ in flat]
    shapes = [tuple(leaf.shape) for _, leaf in flat]
    conv_total = sum(math.prod(s) for n, s in zip(names, shapes, strict=True)
                     if n == "kernel" and len(s) == 4)
    dense_total = sum(math.prod(s) for n, s in zip(names, shapes, strict=True)
                      if n == "kernel" and len(s) == 2)
    conv_key, dense_key = jax.random.split(key)
    normal = np.asarray(jax.random.normal(conv_key, (conv_total,), jnp.float32))
    uniform = np.asarray(jax.random.uniform(dense_key, (dense_total,), jnp.float32, -1.0, 1.0))
    leaves, conv_at, dense_at = [], 0, 0
    for name, shape, is_depthwise in zip(names, shapes, depthwise, strict=True):
        size = math.prod(shape)
        if name == "kernel" and len(shape) == 4:
            fan_out = shape[0] * shape[1] * (1 if is_depthwise else shape[3])
            std = math.sqrt(2.0 / fan_out)
            value = normal[conv_at:conv_at + size].reshape(shape) * np.float32(std)
            conv_at += size
        elif name == "kernel":
            fan = shape[1] if dense_fan == "out" else shape[0]
            value = uniform[dense_at:dense_at + size].reshape(shape) / np.float32(math.sqrt(fan))
            dense_at += size
        elif name in ("scale", "var"):
            value = np.ones(shape, np.float32)
        else:
            value = np.zeros(shape, np.float32)
        leaves.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, leaves)
