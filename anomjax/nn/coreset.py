"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Roth et al. (CVPR 2022, Algorithm 1) pick a coreset ``C`` from the patch features ``M`` by
repeatedly adding ``argmax_{m in M} min_{c in C} ||psi(m) - psi(c)||`` where ``psi`` is a
random linear projection to 128 dimensions (Johnson-Lindenstrauss). The first element is
drawn at random; or, as the authors' ``ApproximateGreedyCoresetSampler``
(patchcore-inspection), every row starts with a bound, its mean distance to a few random
anchor rows (:func:`mean_anchor_distance`), which stays inside the running minimum, and the
first element is the row of largest bound. This module runs that loop as a jitted
``lax.fori_loop``; each step updates the running minimum distances ``[N]`` with one fused
pass over the projected features, so memory is linear in the number of patches (features
``[N, d]`` plus ``[N]`` distances). The loop runs in calls of ``steps_per_call`` steps
between which a tqdm bar advances.

With a :class:`jax.sharding.Mesh`, the features' rows are split over one mesh axis; each
step every device proposes its local farthest patch, the proposals are gathered and the
global argmax wins (ties to the lower global index, as ``jnp.argmax`` on one device).
Distances are summed in a fixed order that does not depend on the number of rows, so the
selection and the radius are bit-identical to one device's.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

PROJECTION_DIM = 128


class Coreset(NamedTuple):
    """A greedy k-center selection.

    Attributes:
      indices: ``[n]`` int32 row indices into the features, in selection order.
      radius: covering radius: every row lies within this (projected) Euclidean distance of
        a selected row.
    """

    indices: np.ndarray
    radius: float


def random_projection(key: jax.Array, in_dim: int, out_dim: int = PROJECTION_DIM) -> jax.Array:
    """Gaussian Johnson-Lindenstrauss matrix ``[in_dim, out_dim]`` with entries N(0, 1/out_dim)."""
    return jax.random.normal(key, (in_dim, out_dim), jnp.float32) / np.sqrt(out_dim)


def mean_anchor_distance(features: jax.Array, anchors: jax.Array) -> jax.Array:
    """Mean Euclidean distance ``[N]`` of every row of ``features`` ``[N, d]`` to the rows
    ``anchors`` ``[a]`` (int) of it: the authors' initial bound of the greedy selection.
    One anchor at a time (``[N, d]`` temporaries, not ``[N, a, d]``)."""
    x = jnp.asarray(features, jnp.float32)
    d = jax.lax.map(lambda i: jnp.sqrt(jnp.sum(jnp.square(x - x[i]), axis=1)),
                    jnp.asarray(anchors))  # [a, N]
    return jnp.mean(d, axis=0)


def _squared_distances(x: jax.Array, center: jax.Array) -> jax.Array:
    """``|x_i - center|^2`` ``[N]`` for ``x`` ``[N, 2^j]``, summed in a fixed pairwise order.

    Only elementwise adds are used, so a row's result does not depend on how many rows are
    processed together: one device and a mesh of devices get the same bits.
    """
    sq = jnp.square(x - center[None, :])
    while sq.shape[1] > 1:
        half = sq.shape[1] // 2
        sq = sq[:, :half] + sq[:, half:]
    return sq[:, 0]


def _select(x: jax.Array, min_d: jax.Array, selected: jax.Array, step: jax.Array,
            idx: jax.Array, center: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Record ``idx`` as selection ``step`` and fold its distances into ``min_d``."""
    d = _squared_distances(x, center)
    min_d = jnp.minimum(min_d, d)
    return min_d, selected.at[step].set(idx)


@functools.partial(jax.jit, donate_argnums=(1, 2))
def _steps_single(x, min_d, selected, start, first, last):
    def body(step, carry):
        min_d, selected = carry
        idx = jnp.where(step == 0, start, jnp.argmax(min_d).astype(jnp.int32))
        min_d, selected = _select(x, min_d, selected, step, idx, x[idx])
        return min_d.at[idx].set(-jnp.inf), selected

    return jax.lax.fori_loop(first, last, body, (min_d, selected))


@functools.partial(jax.jit, donate_argnums=(1, 2), static_argnames=("mesh", "axis"))
def _steps_sharded(x, min_d, selected, start, first, last, *, mesh, axis):
    rows = x.shape[0] // mesh.shape[axis]

    def local(x_l, min_d_l, selected_r):
        me = jax.lax.axis_index(axis).astype(jnp.int32)

        def body(step, carry):
            min_d_l, selected_r = carry
            local_arg = jnp.argmax(min_d_l).astype(jnp.int32)
            local_arg = jnp.where(step == 0, start % rows, local_arg)
            vals = jax.lax.all_gather(jnp.max(min_d_l), axis)  # [shards]
            args = jax.lax.all_gather(local_arg, axis)
            cands = jax.lax.all_gather(x_l[local_arg], axis)  # [shards, d]
            owner = jnp.where(step == 0, start // rows, jnp.argmax(vals).astype(jnp.int32))
            idx = owner * rows + args[owner]
            min_d_l, selected_r = _select(x_l, min_d_l, selected_r, step, idx, cands[owner])
            min_d_l = jnp.where(owner == me, min_d_l.at[args[owner]].set(-jnp.inf), min_d_l)
            return min_d_l, selected_r

        return jax.lax.fori_loop(first, last, body, (min_d_l, selected_r))

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P()),
                         out_specs=(P(axis), P()), check_vma=False)(x, min_d, selected)


def greedy_coreset(features: jax.Array, num_select: int, *, start: int | jax.Array = 0,
                   bound: jax.Array | None = None,
                   mesh: Mesh | None = None, axis: str | None = None,
                   steps_per_call: int = 256, disable: bool = False) -> Coreset:
    """Greedy k-center selection of ``num_select`` rows of ``features`` ``[N, d]``.

    Args:
      features: ``[N, d]`` (already projected) float features.
      num_select: coreset size, ``1 <= num_select <= N``.
      start: index of the first selected row (PatchCore draws it at random).
      bound: optional ``[N]`` initial distance of every row (the running minimum starts
        from it instead of infinity; the authors' sampler passes
        :func:`mean_anchor_distance` and ``start`` = its argmax); the reported radius is then
        the largest remaining minimum, bound included.
      mesh: split the rows over ``axis`` of this mesh (same selection as one device).
      axis: mesh axis name (default: the mesh's first axis).
      steps_per_call: selection steps per jitted call (the progress bar's granularity).
      disable: turn the progress bar off.
    """
    x = jnp.asarray(features, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"greedy_coreset expects features [N, d]; got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= num_select <= n:
        raise ValueError(f"num_select={num_select} must be between 1 and the {n} feature rows")
    width = 1 << max(x.shape[1] - 1, 0).bit_length()  # zero columns keep every distance
    if width != x.shape[1]:
        x = jnp.pad(x, ((0, 0), (0, width - x.shape[1])))
    start = jnp.asarray(start, jnp.int32)
    selected = jnp.zeros((num_select,), jnp.int32)
    if bound is None:
        initial = jnp.full((n,), jnp.inf, jnp.float32)
    else:
        initial = jnp.square(jnp.asarray(bound, jnp.float32))  # the loop keeps squares
        if initial.shape != (n,):
            raise ValueError(f"bound must be [{n}], got shape {initial.shape}")
    if mesh is None:
        min_d = initial
        run = _steps_single
    else:
        axis = axis or mesh.axis_names[0]
        pad = (-n) % mesh.shape[axis]
        rows = NamedSharding(mesh, P(axis))
        x = jax.device_put(jnp.pad(x, ((0, pad), (0, 0))), rows)
        min_d = jax.device_put(
            jnp.concatenate([initial, jnp.full((pad,), -jnp.inf)]), rows)
        selected = jax.device_put(selected, NamedSharding(mesh, P()))
        run = functools.partial(_steps_sharded, mesh=mesh, axis=axis)
    with tqdm(total=num_select, desc="coreset", unit="step", disable=disable) as bar:
        for first in range(0, num_select, steps_per_call):
            last = min(first + steps_per_call, num_select)
            min_d, selected = run(x, min_d, selected, start, jnp.int32(first), jnp.int32(last))
            jax.block_until_ready(selected)  # the bar follows the computation, not the dispatch
            bar.update(last - first)
    radius = float(jnp.sqrt(jnp.maximum(jnp.max(min_d), 0.0)))
    return Coreset(indices=np.asarray(selected), radius=radius)
