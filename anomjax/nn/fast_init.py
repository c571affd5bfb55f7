"""Initialise a Flax module's variables from NumPy draws instead of per-parameter threefry.

``module.init`` makes one RNG call per parameter, and XLA on CPU compiles threefry slowly
(about 20 s for a small DCGAN on a busy 2-core machine). :func:`init_variables` takes the
shapes from ``jax.eval_shape`` and draws every leaf from a NumPy generator seeded by the JAX
key, so it costs no compilation and is deterministic given the key.

Initialisers (by the leaf's name):

* ``kernel``: ``"dcgan"`` N(0, 0.02) (Radford et al., as in the GANomaly / AnoGAN code);
  ``"lecun"`` N(0, 1 / fan_in) with ``fan_in`` the product of all but the last dimension
  (Flax's default scale, untruncated); ``"torch"`` U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  (PyTorch's default for convolutions and linear layers).
* ``scale``: 1, plus N(0, 0.02) under ``"dcgan"``. ``var``: 1. ``bias``, ``mean``: 0.
* any other name: given in ``special`` as ``name -> (shape, rng) -> array``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Special = dict[str, Callable[[tuple[int, ...], np.random.Generator], np.ndarray]]


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the bits of a (raw or typed) JAX key."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(jax.device_get(key), np.uint32).ravel().tolist())


def _leaf(name: str, shape: tuple[int, ...], rng: np.random.Generator, policy: str,
          special: Special) -> np.ndarray:
    if name in special:
        return np.asarray(special[name](shape, rng), np.float32)
    if name == "kernel":
        fan_in = max(math.prod(shape[:-1]), 1)
        if policy == "dcgan":
            return rng.normal(0.0, 0.02, shape)
        if policy == "lecun":
            return rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
        if policy == "torch":
            bound = 1.0 / math.sqrt(fan_in)
            return rng.uniform(-bound, bound, shape)
        raise ValueError(f"unknown initialisation policy {policy!r}")
    if name == "scale":
        return 1.0 + (rng.normal(0.0, 0.02, shape) if policy == "dcgan" else np.zeros(shape))
    if name == "var":
        return np.ones(shape)
    if name in ("bias", "mean"):
        return np.zeros(shape)
    raise ValueError(f"no initialiser for parameter {name!r} {shape}; pass it in 'special'")


def init_variables(module: nn.Module, key: jax.Array, *args: Any, policy: str = "lecun",
                   special: Special | None = None, **kwargs: Any) -> dict[str, Any]:
    """``module.init(key, *args, **kwargs)``'s variables, drawn as the module doc says."""
    template = jax.eval_shape(functools.partial(module.init, **kwargs), key, *args)
    rng = numpy_rng(key)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = [jnp.asarray(_leaf(str(path[-1].key), tuple(leaf.shape), rng, policy,
                                special or {}).astype(np.float32)) for path, leaf in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves)
