"""The pure, jitted training step shared by every ``kind = "train"`` method.

Its products run at the default precision and ``compute_dtype="bfloat16"`` keeps the
params, BatchNorm statistics and losses float32 (the policy: :mod:`anomjax.precision`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from anomjax.methods.optimization import GroupedOptimizer
from anomjax.methods.protocol import overrides
from anomjax.train.grouped_step import make_grouped_step
from anomjax.train.state import TrainState, method_state

TrainStep = Callable[..., tuple[TrainState, dict[str, jax.Array]]]
"""``train_step(train_state, images, key, frozen=None, host=None) -> (train_state, metrics)``."""


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    """Cast the floating-point leaves of ``tree`` to ``dtype`` (other leaves unchanged)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
        tree)


def compute_copies(dtype: jnp.dtype | None, params: Any, state: dict[str, Any],
                   *inputs: Any) -> tuple:
    """``(params, state, *inputs)`` as a loss sees them under ``compute_dtype``: their floats
    cast to ``dtype`` (all unchanged when ``None``), except the running BatchNorm statistics
    ``state["batch_stats"]``, which stay float32 (a bfloat16 copy would re-quantise them at
    every update)."""
    if dtype is None:
        return (params, state, *inputs)
    rest = {k: v for k, v in state.items() if k != "batch_stats"}
    params, rest, *inputs = _cast_floats((params, rest, *inputs), dtype)
    if "batch_stats" in state:
        rest["batch_stats"] = state["batch_stats"]
    return (params, rest, *inputs)


def loss_inputs(frozen: Any, host: Any) -> dict[str, Any]:
    """The keywords of a method's ``loss`` besides its arguments: ``frozen=`` (cached frozen
    features) and ``host=`` (the step's host inputs), each where given."""
    return {name: value for name, value in (("frozen", frozen), ("host", host))
            if value is not None}


def all_finite(tree: Any) -> jax.Array:
    """``[]`` bool: every floating-point leaf of ``tree`` is free of NaN and infinity."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def member_finite(tree: Any, count: int) -> jax.Array:
    """``[K]`` bool: member ``k``'s slice of every floating-point leaf (leading axis ``K``)
    of ``tree`` is free of NaN and infinity."""
    flags = [jnp.all(jnp.isfinite(x.reshape(count, -1)), axis=1) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags), axis=0) if flags else jnp.ones((count,), bool)


def _members_step(step: Callable, count: int, isolated: bool) -> Callable:
    """The step of a population of ``count`` members (``method.member_count``), checked
    member by member.

    ``step(ts, images, key, frozen, host) -> (ts, metrics)`` is the plain step; its metrics carry
    ``member_losses`` ``[K]`` (and ``member_grad_squares`` ``[K]`` where it has the
    gradients). Members that diverged before enter with zeroed parameters (so no inf or NaN
    is computed from them) and keep their state. A member whose update is not finite is
    masked: it keeps its last finite params, optimiser state and batch statistics, and
    ``extra["diverged_at"]`` records the step. Because XLA can spread a NaN of one member
    into the others' gradients (a vmapped convolution's backward pass is one grouped
    convolution), a step in which a member's loss is not finite is computed again with that
    member zeroed, so the others get exactly their own update (not needed, and not compiled,
    when the members are ``isolated``: computed one after another). ``loss`` and
    ``grad_norm`` are over the members trained, ``members_alive`` counts them, and
    ``finite`` is 0 only when none is left.
    """

    def expand(mask: jax.Array, x: jax.Array) -> jax.Array:
        return mask.reshape((-1,) + (1,) * (x.ndim - 1))

    def attempt(ts: TrainState, active: jax.Array, images: jax.Array, key: jax.Array,
                frozen: Any, host: Any) -> tuple[TrainState, dict[str, jax.Array], jax.Array]:
        zeroed = ts.replace(params=jax.tree.map(
            lambda p: jnp.where(expand(active, p), p, jnp.zeros_like(p)), ts.params))
        new, metrics = step(zeroed, images, key, frozen, host)
        ok = active & jnp.isfinite(metrics["member_losses"]) & member_finite(
            (new.params, new.opt_state, new.batch_stats), count)
        if "member_grad_squares" in metrics:
            ok = ok & jnp.isfinite(metrics["member_grad_squares"])
        return new, metrics, ok

    def members_step(ts: TrainState, images: jax.Array, key: jax.Array, frozen: Any = None,
                     host: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        alive = ts.extra["diverged_at"] < 0
        first = attempt(ts, alive, images, key, frozen, host)
        if isolated:
            new, metrics, keep = first
        else:  # again without the members whose loss is not finite: their NaN may have
            # reached the others' gradients
            suspects = alive & ~jnp.isfinite(first[1]["member_losses"])
            new, metrics, keep = jax.lax.cond(
                jnp.all(first[2] == alive), lambda: first,
                lambda: attempt(ts, alive & ~suspects, images, key, frozen, host))

        def pick(n: jax.Array, o: jax.Array) -> jax.Array:
            return jnp.where(expand(keep, n), n, o)

        diverged_at = jnp.where(alive & ~keep, ts.step + 1, ts.extra["diverged_at"])
        new = new.replace(params=jax.tree.map(pick, new.params, ts.params),
                          opt_state=jax.tree.map(pick, new.opt_state, ts.opt_state),
                          batch_stats=jax.tree.map(pick, new.batch_stats, ts.batch_stats),
                          extra={**new.extra, "diverged_at": diverged_at})
        losses = metrics.pop("member_losses")
        squares = metrics.pop("member_grad_squares", None)
        metrics["loss"] = jnp.sum(jnp.where(keep, losses, 0.0))
        if squares is not None:
            metrics["grad_norm"] = jnp.sqrt(jnp.sum(jnp.where(keep, squares, 0.0)))
        else:  # a grouped step's norm spans every member: a dead member's NaN is dropped
            metrics["grad_norm"] = jnp.where(jnp.isfinite(metrics["grad_norm"]),
                                             metrics["grad_norm"], 0.0)
        metrics["members_alive"] = jnp.sum(keep).astype(jnp.float32)
        finite = jnp.any(keep) & jnp.isfinite(metrics["loss"])
        return new, {**metrics, "finite": finite.astype(jnp.float32)}

    return members_step


def make_train_step(method: Any, optimizer: optax.GradientTransformation, *,
                    compute_dtype: str | None = None,
                    replicated: jax.sharding.Sharding | None = None,
                    state_sharding: Any = None) -> TrainStep:
    """``train_step(train_state, images [B, H, W, 3], key, frozen=None, host=None) ->
    (train_state, metrics)``.

    Jitted with the train state's buffers donated. ``frozen`` (the batch's cached frozen
    features, see :mod:`anomjax.train.frozen_cache`) and ``host`` (the step's host inputs,
    ``[B, ...]`` arrays, see :mod:`anomjax.train.host_draws`) are passed on as
    ``method.loss(..., frozen=frozen, host=host)`` when given. The gradient of
    ``method.loss`` updates the params through ``optimizer``; a ``"batch_stats"`` entry of
    the loss's aux replaces the running statistics; every other aux entry is returned as a
    scalar metric, with ``loss`` and ``grad_norm``, and ``finite``: 1.0 when the loss, the
    gradient norm and every leaf of the *updated* train state (params, optimiser state,
    batch statistics) are finite, so a state is known good before it is checkpointed. With
    ``compute_dtype="bfloat16"`` the loss runs on bfloat16 copies of the params, carried
    state and images while the master params, the optimiser and the running ``batch_stats``
    stay float32 (the statistics are not re-quantised to bfloat16 at every update). A method
    with ``member_count`` K (a population) is checked per member instead: a member whose
    update is not finite keeps its last finite state and the others train on
    (:func:`_members_step`); the step is non-finite only when no member is left. Under a
    mesh, sharding follows the inputs (batch sharded, state replicated); ``replicated`` (the
    mesh's replicated sharding) pins the outputs to it, so a propagation change can never
    silently undo the buffer donation; ``state_sharding`` (a prefix of the train state,
    default ``replicated``) pins the updated state instead where it is not replicated (a
    population's member axis). A :class:`~anomjax.methods.optimization.GroupedOptimizer`
    gets the step of several parameter groups (its ``loss`` metric is the sum of the groups'
    losses, checked the same way). A method that overrides ``train_update`` (several updates
    per batch, e.g. CFLOW-AD's fibre mini-batches) makes its own updates in the step
    (float32; not in a population).
    """
    dtype = None if compute_dtype in (None, "float32") else jnp.dtype(compute_dtype)
    if isinstance(optimizer, GroupedOptimizer):  # several groups (anomjax.train.grouped_step)
        grouped_step = make_grouped_step(optimizer, functools.partial(compute_copies, dtype))

        def train_step(ts: TrainState, images: jax.Array, key: jax.Array, frozen: Any = None,
                       host: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
            if frozen is not None or host is not None:
                raise ValueError("cached frozen features and host inputs are not supported "
                                 "with parameter groups (GroupedOptimizer)")
            new, metrics = grouped_step(ts, images, key)
            if method.member_count:
                return new, metrics  # checked per member by _members_step
            finite = all_finite((metrics["loss"], new.params, new.opt_state, new.batch_stats))
            return new, {**metrics, "finite": finite.astype(jnp.float32)}
    elif overrides(method, "train_update") and not method.member_count:
        train_step = _own_update_step(method, optimizer, dtype)
    else:
        train_step = _single_step(method, optimizer, dtype)
    if method.member_count:
        train_step = _members_step(train_step, method.member_count, method.members_isolated)
    if replicated is None:
        return jax.jit(train_step, donate_argnums=0)
    state_sharding = replicated if state_sharding is None else state_sharding
    return jax.jit(train_step, donate_argnums=0, out_shardings=(state_sharding, replicated))


def _single_step(method: Any, optimizer: optax.GradientTransformation,
                 dtype: jnp.dtype | None) -> Callable:
    """The step of one optimiser over ``method.loss`` (see :func:`make_train_step`)."""

    def train_step(ts: TrainState, images: jax.Array, key: jax.Array, frozen: Any = None,
                   host: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, Any]]:
            params, state, x, cached, drawn = compute_copies(dtype, params, method_state(ts),
                                                             images, frozen, host)
            state["params"] = params
            loss, aux = method.loss(params, state, x, key, **loss_inputs(cached, drawn))
            return loss.astype(jnp.float32), dict(aux)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params)
        member_losses = aux.pop("member_losses", None)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        batch_stats = aux.pop("batch_stats", ts.batch_stats)
        if ts.batch_stats is not None:
            batch_stats = jax.tree.map(lambda new, old: new.astype(old.dtype), batch_stats,
                                       ts.batch_stats)
        grad_norm = optax.tree.norm(grads)
        metrics = {"loss": loss, "grad_norm": grad_norm}
        metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in aux.items()})
        new = ts.replace(params=params, opt_state=opt_state, batch_stats=batch_stats,
                         step=ts.step + 1)
        if method.member_count:  # checked per member by _members_step
            count = method.member_count
            metrics["member_losses"] = member_losses
            metrics["member_grad_squares"] = sum(
                jnp.sum(jnp.square(g).reshape(count, -1), axis=1)
                for g in jax.tree.leaves(grads))
            return new, metrics
        finite = all_finite((loss, grad_norm, params, opt_state, batch_stats))
        metrics["finite"] = finite.astype(jnp.float32)
        return new, metrics

    return train_step


def _own_update_step(method: Any, optimizer: Any, dtype: jnp.dtype | None) -> Callable:
    """The step of a method that makes its own updates (``method.train_update``, e.g.
    several per batch); float32 only. Metrics as :func:`_single_step`'s."""
    if dtype is not None:
        raise ValueError(f"{method.name} makes its own updates (train_update), which run in "
                         f"float32: train it without compute_dtype={dtype}")

    def train_step(ts: TrainState, images: jax.Array, key: jax.Array, frozen: Any = None,
                   host: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        params, opt_state, loss, aux = method.train_update(optimizer, ts.opt_state,
                                                           method_state(ts), images, key,
                                                           **loss_inputs(frozen, host))
        aux = dict(aux)
        grad_norm = aux.pop("grad_norm")
        metrics = {"loss": loss.astype(jnp.float32), "grad_norm": grad_norm}
        metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in aux.items()})
        new = ts.replace(params=params, opt_state=opt_state, step=ts.step + 1)
        finite = all_finite((loss, grad_norm, params, opt_state))
        return new, {**metrics, "finite": finite.astype(jnp.float32)}

    return train_step
