"""The pure, jitted training step shared by every ``kind = "train"`` method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from anomjax.train.groups import GroupedOptimizer, make_grouped_step
from anomjax.train.state import TrainState, method_state

TrainStep = Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    """Cast the floating-point leaves of ``tree`` to ``dtype`` (other leaves unchanged)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
        tree)


def make_train_step(method: Any, optimizer: optax.GradientTransformation, *,
                    compute_dtype: str | None = None) -> TrainStep:
    """``train_step(train_state, images [B, H, W, 3], key) -> (train_state, metrics)``.

    Jitted with the train state's buffers donated. The gradient of ``method.loss`` updates the
    params through ``optimizer``; a ``"batch_stats"`` entry of the loss's aux replaces the
    running statistics; every other aux entry is returned as a scalar metric, with ``loss``
    and ``grad_norm``. With ``compute_dtype="bfloat16"`` the loss runs on bfloat16 copies of
    the params, carried state and images while the master params and optimiser stay float32.
    Under a mesh, sharding follows the inputs (batch sharded, state replicated), so the same
    function runs on one device, many devices or many hosts. A
    :class:`~anomjax.train.groups.GroupedOptimizer` gets the step of several parameter groups.
    """
    dtype = None if compute_dtype in (None, "float32") else jnp.dtype(compute_dtype)
    if isinstance(optimizer, GroupedOptimizer):  # several groups (anomjax.train.groups)
        def cast(tree: Any) -> Any:
            return tree if dtype is None else _cast_floats(tree, dtype)

        return jax.jit(make_grouped_step(optimizer, cast), donate_argnums=0)

    def train_step(ts: TrainState, images: jax.Array,
                   key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, Any]]:
            state = method_state(ts)
            x = images
            if dtype is not None:
                params, state, x = _cast_floats((params, state, x), dtype)
            state["params"] = params
            loss, aux = method.loss(params, state, x, key)
            return loss.astype(jnp.float32), dict(aux)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        batch_stats = aux.pop("batch_stats", ts.batch_stats)
        if ts.batch_stats is not None:
            batch_stats = jax.tree.map(lambda new, old: new.astype(old.dtype), batch_stats,
                                       ts.batch_stats)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in aux.items()})
        new = ts.replace(params=params, opt_state=opt_state, batch_stats=batch_stats,
                         step=ts.step + 1)
        return new, metrics

    return jax.jit(train_step, donate_argnums=0)
