"""The training step of a :class:`~anomjax.methods.optimization.GroupedOptimizer`: several
parameter groups, each with its own optimiser and loss, in phases, in one jitted step (the
contract is in :mod:`anomjax.methods.optimization`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from anomjax.methods.optimization import GroupedOptimizer, Phase, Update
from anomjax.train.state import TrainState, method_state

Cast = Callable[..., tuple]
"""``cast(params, state, images) -> (params, state, images)`` as the loss sees them."""


def _run_update(u: Update, optimizer: optax.GradientTransformation, carry: tuple,
                ts: TrainState, images: jax.Array, key: jax.Array, cast: Cast) -> tuple:
    """Apply one update to ``carry = (params, opt_state, batch_stats, handed)``; returns the
    new carry, its loss, gradient norm and float32 aux."""
    params, opt_state, batch_stats, handed = carry

    def loss_fn(group_params: Any) -> tuple[jax.Array, dict[str, Any]]:
        full = {**params, u.group: group_params}
        state = method_state(ts.replace(params=full, batch_stats=batch_stats))
        full, state, x = cast(full, state, images)
        state["carry"] = jax.lax.stop_gradient(handed)
        state["params"] = full
        loss, aux = u.loss(full, state, x, key)
        return loss.astype(jnp.float32), dict(aux)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params[u.group])
    updates, group_state = optimizer.update(grads, opt_state[u.group], params[u.group])
    stepped = optax.apply_updates(params[u.group], updates)
    if u.after is not None:
        stepped = u.after(stepped, loss, jax.random.fold_in(key, 1))
    params = {**params, u.group: stepped}
    opt_state = {**opt_state, u.group: group_state}
    new_stats = aux.pop("batch_stats", batch_stats)
    if batch_stats is not None:
        new_stats = jax.tree.map(lambda n, o: n.astype(o.dtype), new_stats, batch_stats)
    handed = {**handed, **aux.pop("carry", {})}
    aux = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}
    return (params, opt_state, new_stats, handed), loss, optax.tree.norm(grads), aux


def _repeats(u: Update, v: Update) -> bool:
    """``v`` is the same every-step update as ``u`` under another name (a method that makes
    several updates of one loss per step, e.g. Patch SVDD's pair batches)."""
    return (u.group, u.loss, u.after, u.every) == (v.group, v.loss, v.after, 1)


def _runs(updates: tuple[Update, ...]) -> list[tuple[int, int]]:
    """``(first index, length)`` of each maximal run of repeated updates, in order."""
    runs: list[tuple[int, int]] = []
    for i, u in enumerate(updates):
        if runs and _repeats(updates[runs[-1][0]], u):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _phase_step(grouped: GroupedOptimizer, phase: Phase, ts: TrainState, images: jax.Array,
                key: jax.Array, cast: Cast) -> tuple:
    """Run ``phase``'s updates in order; ``(params, opt_state, batch_stats), metrics``.

    Update ``i`` gets the key ``fold_in(key, i)``. A run of repeated updates (``_repeats``)
    is compiled once: its first update runs as it is (it fixes the structure of what it
    hands on) and the others in a ``lax.scan``, the same arithmetic as unrolled.
    """
    carry = (ts.params, ts.opt_state, ts.batch_stats, {})
    metrics: dict[str, jax.Array] = {}
    losses: list[jax.Array] = []
    norms: list[jax.Array] = []

    def record(u: Update, loss: jax.Array, norm: jax.Array, aux: dict[str, jax.Array]) -> None:
        metrics[f"loss_{u.name}"], metrics[f"grad_norm_{u.name}"] = loss, norm
        if "member_losses" in aux:  # a population: each member's losses, summed like `loss`
            member = aux.pop("member_losses")
            metrics["member_losses"] = metrics.get("member_losses", 0.0) + member
        metrics.update(aux)
        losses.append(loss)
        norms.append(norm)

    for first, length in _runs(phase.updates):
        u = phase.updates[first]

        def run(c: tuple, i: jax.Array | int, u: Update = u) -> tuple:
            return _run_update(u, grouped.optimizers[u.group], c, ts, images,
                               jax.random.fold_in(key, i), cast)

        if u.every == 1:
            carry, loss, norm, aux = run(carry, first)
        else:
            shapes = jax.eval_shape(run, carry, first)

            def skip(c: tuple, shapes: Any = shapes) -> tuple:
                zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
                handed = {**zeros[0][3], **c[3]}  # what a skipped update would hand on: 0
                return ((*c[:3], handed), *zeros[1:])

            carry, loss, norm, aux = jax.lax.cond(ts.step % u.every == u.every - 1,
                                                  lambda c, i=first: run(c, i), skip, carry)
        record(u, loss, norm, aux)
        if length > 1:
            def body(c: tuple, i: jax.Array) -> tuple:
                c, loss, norm, aux = run(c, i)
                return c, (loss, norm, aux)

            carry, (loss, norm, aux) = jax.lax.scan(
                body, carry, jnp.arange(first + 1, first + length))
            for j in range(length - 1):
                record(phase.updates[first + 1 + j], loss[j], norm[j],
                       jax.tree.map(lambda a, j=j: a[j], aux))
    metrics["loss"] = jnp.sum(jnp.stack(losses))
    metrics["grad_norm"] = jnp.sqrt(jnp.sum(jnp.square(jnp.stack(norms))))
    return carry[:3], metrics


def make_grouped_step(grouped: GroupedOptimizer, cast: Cast) -> Callable:
    """``train_step(ts, images, key) -> (ts, metrics)`` (not yet jitted; see module doc).

    ``cast(params, state, images)`` converts what a loss sees (e.g. to bfloat16; the
    step's ``compute_copies`` keeps the BatchNorm statistics float32).
    """

    def train_step(ts: TrainState, images: jax.Array,
                   key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        branches = [lambda ts, p=p: _phase_step(grouped, p, ts, images, key, cast)
                    for p in grouped.phases]
        if len(branches) == 1:
            carry, metrics = branches[0](ts)
        else:
            outs = [jax.eval_shape(b, ts)[1] for b in branches]
            names = sorted({k for m in outs for k in m})

            def padded(branch: Callable, ts: TrainState) -> tuple:
                carry, m = branch(ts)
                return carry, {k: m.get(k, jnp.zeros((), jnp.float32)) for k in names}

            carry, metrics = jax.lax.switch(
                grouped.phase_index(ts.step),
                [lambda ts, b=b: padded(b, ts) for b in branches], ts)
        params, opt_state, batch_stats = carry
        metrics = {**metrics, "phase": grouped.phase_index(ts.step).astype(jnp.float32)}
        return ts.replace(params=params, opt_state=opt_state, batch_stats=batch_stats,
                          step=ts.step + 1), metrics

    return train_step

