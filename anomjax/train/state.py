"""The train state pytree and its conversion to and from a method's state dict."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import struct

from anomjax.types import State


@struct.dataclass
class TrainState:
    """Everything that changes (or is carried) during training, as one pytree.

    Attributes:
      params: the trainable pytree (``state["params"]`` of the method).
      opt_state: the optax optimiser state.
      batch_stats: BatchNorm running statistics (``None`` when the method has none).
      step: ``[]`` int32 number of optimiser steps taken.
      key: ``[2]`` uint32 raw PRNG key; step ``s`` uses ``fold_in(key, s)``.
      extra: every other entry of the method state, carried unchanged.
    """

    params: Any
    opt_state: Any
    batch_stats: Any
    step: jax.Array
    key: jax.Array
    extra: dict[str, Any]


def raw_key(key: jax.Array) -> jax.Array:
    """``key`` as a raw ``[2]`` uint32 array (typed keys are unwrapped)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def init_train_state(state: State, optimizer: optax.GradientTransformation,
                     key: jax.Array) -> TrainState:
    """Build a ``TrainState`` from a method's initial state dict and an optimiser."""
    if "params" not in state:
        raise ValueError("a kind='train' method's init() must return a dict with a 'params' "
                         f"entry; it returned the keys {sorted(state)}")
    extra = {k: v for k, v in state.items() if k not in ("params", "batch_stats")}
    return TrainState(params=state["params"], opt_state=optimizer.init(state["params"]),
                      batch_stats=state.get("batch_stats"),
                      step=jax.numpy.zeros((), jax.numpy.int32), key=raw_key(key), extra=extra)


def method_state(train_state: TrainState) -> State:
    """The method's state dict (``params``, ``batch_stats`` if any, and the carried entries)."""
    out = dict(train_state.extra)
    out["params"] = train_state.params
    if train_state.batch_stats is not None:
        out["batch_stats"] = train_state.batch_stats
    return out
