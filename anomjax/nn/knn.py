"""Exact k-nearest-neighbour search against a memory bank, chunked to a memory bound.

Distances are Euclidean. Each chunk computes ``|q|^2 - 2 q.b + |b|^2`` with one matmul and
keeps the ``k`` smallest with ``lax.top_k`` (``argmin`` when ``k = 1``); a running top-``k``
is merged over bank chunks, so the largest temporary is one ``[query_chunk, bank_chunk]``
float32 block whose size the caller bounds with ``max_block_bytes``.

Precision. The matmul runs at ``Precision.HIGHEST`` (full float32 on GPUs and TPUs, whose
default is TF32 or bfloat16 inputs: for near neighbours the expansion cancels and those
defaults err by 1 % to over 10 %). Even in float32 the expansion loses relative accuracy
when a distance is much smaller than the vectors' norms (about ``eps * |q|^2 / d^2``), so
the ``k`` returned distances are recomputed exactly from the differences ``|q - b_i|``
(``Q * k * D`` extra work). The bank may be stored in bfloat16 (half the memory); its chunks
are widened to float32 first, so the remaining error is the rounding of the stored bank
(and, for near-ties, which of two almost equally near rows is chosen).

With a :class:`jax.sharding.Mesh`, the bank is split along its rows over one mesh axis;
every device searches its shard, and the per-shard top-``k`` lists are gathered and reduced
to the global top-``k``. Ties go to the lower bank index in both paths.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DEFAULT_BLOCK_BYTES = 256 * 2**20
HIGHEST = jax.lax.Precision.HIGHEST
_MIN_QUERY_CHUNK = 64
_SYMBOLIC_QUERY_CHUNK = 1024


def chunk_sizes(num_queries: int, bank_size: int, k: int,
                max_block_bytes: int = DEFAULT_BLOCK_BYTES, dim: int = 1) -> tuple[int, int]:
    """``(query_chunk, bank_chunk)`` whose float32 blocks fit ``max_block_bytes``.

    The blocks are the ``[query_chunk, bank_chunk]`` distances and the ``[query_chunk, k,
    dim]`` neighbours gathered to recompute the returned distances exactly.
    """
    if max_block_bytes < 4 * k:
        raise ValueError(f"max_block_bytes={max_block_bytes} cannot hold even one row of k={k} "
                         "distances")
    budget = max_block_bytes // 4
    bank_chunk = _balanced(bank_size, max(k, budget // _MIN_QUERY_CHUNK))
    query_chunk = _balanced(num_queries, max(1, budget // max(bank_chunk, k * dim)))
    return query_chunk, bank_chunk


def _balanced(total: int, limit: int) -> int:
    """The smallest chunk ``<= limit`` that splits ``total`` into as few chunks as ``limit`` does.

    Keeps the padding of the last chunk small (e.g. 32768 rows at limit 31000: 2 x 16384).
    A symbolic ``total`` (a ``jax.export`` batch dimension) gets ``min(limit, 1024)``, so a
    small batch is not padded to the whole budget.
    """
    if not isinstance(total, int):
        return min(limit, _SYMBOLIC_QUERY_CHUNK)
    count = -(-total // max(1, min(limit, total)))
    return -(-total // count)


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    if not isinstance(x.shape[0], int):  # symbolic rows: pad to an explicit multiple
        rows = (x.shape[0] + multiple - 1) // multiple * multiple
        return jnp.concatenate([x, jnp.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])
    pad = (-x.shape[0]) % multiple
    return jnp.pad(x, ((0, pad), (0, 0))) if pad else x


def _search(queries: jax.Array, bank: jax.Array, num_valid: jax.Array, index_offset: jax.Array,
            *, k: int, query_chunk: int, bank_chunk: int) -> tuple[jax.Array, jax.Array]:
    """Squared distances ``[Q, k]`` and bank indices of the ``k`` nearest rows of ``bank``.

    Rows of ``bank`` whose global index ``index_offset + row`` is ``>= num_valid`` are
    padding and never returned (their distance is ``+inf``).
    """
    num_queries = queries.shape[0]
    q = _pad_rows(queries.astype(jnp.float32), query_chunk)
    b = _pad_rows(bank, bank_chunk)
    q_chunks = q.reshape(-1, query_chunk, q.shape[1])
    b_chunks = b.reshape(-1, bank_chunk, b.shape[1])
    starts = jnp.arange(b_chunks.shape[0], dtype=jnp.int32) * bank_chunk
    kk = min(k, bank_chunk)

    def one_query_chunk(qc: jax.Array) -> tuple[jax.Array, jax.Array]:
        q_sq = jnp.sum(qc * qc, axis=1, keepdims=True)

        def merge(carry, chunk_and_start):
            best_d, best_i = carry
            bc, start = chunk_and_start
            bc = bc.astype(jnp.float32)
            idx = index_offset + start + jnp.arange(bank_chunk, dtype=jnp.int32)
            b_sq = jnp.where(idx < num_valid, jnp.sum(bc * bc, axis=1), jnp.inf)
            d = q_sq - 2.0 * jnp.matmul(qc, bc.T, precision=HIGHEST) + b_sq[None, :]
            if k == 1:  # min/argmin is much cheaper than top_k; strict < keeps the lower index
                pos = jnp.argmin(d, axis=1)
                new_d = jnp.take_along_axis(d, pos[:, None], axis=1)
                better = new_d < best_d
                return (jnp.where(better, new_d, best_d),
                        jnp.where(better, idx[pos][:, None], best_i)), None
            neg, pos = jax.lax.top_k(-d, kk)
            cand_d = jnp.concatenate([best_d, -neg], axis=1)
            cand_i = jnp.concatenate([best_i, idx[pos]], axis=1)
            neg, pos = jax.lax.top_k(-cand_d, k)
            return (-neg, jnp.take_along_axis(cand_i, pos, axis=1)), None

        init = (jnp.full((query_chunk, k), jnp.inf, jnp.float32),
                jnp.full((query_chunk, k), -1, jnp.int32))
        (best_d, best_i), _ = jax.lax.scan(merge, init, (b_chunks, starts))
        return _exact_distances(qc, b, best_d, best_i - index_offset), best_i

    d, i = jax.lax.map(one_query_chunk, q_chunks)
    d, i = d.reshape(-1, k)[:num_queries], i.reshape(-1, k)[:num_queries]
    if k > 1:  # exact distances may reorder near-ties; a stable sort keeps index order
        order = jnp.argsort(d, axis=1, stable=True)
        d, i = jnp.take_along_axis(d, order, axis=1), jnp.take_along_axis(i, order, axis=1)
    return d, i


def _exact_distances(queries: jax.Array, bank: jax.Array, expanded: jax.Array,
                     rows: jax.Array) -> jax.Array:
    """Squared distances ``[Q, k]`` recomputed as ``|q - bank[rows]|^2`` (``+inf`` kept).

    ``expanded`` are the expansion's distances of the same pairs; where they are ``+inf``
    (padding rows), the result stays ``+inf``.
    """
    picked = jnp.take(bank, jnp.clip(rows, 0, bank.shape[0] - 1), axis=0).astype(jnp.float32)
    exact = jnp.sum(jnp.square(queries[:, None, :] - picked), axis=-1)
    return jnp.where(jnp.isinf(expanded), jnp.inf, exact)


@functools.partial(jax.jit, static_argnames=("k", "query_chunk", "bank_chunk"))
def _knn_single(queries, bank, *, k, query_chunk, bank_chunk):
    d, i = _search(queries, bank, jnp.int32(bank.shape[0]), jnp.int32(0), k=k,
                   query_chunk=query_chunk, bank_chunk=bank_chunk)
    return jnp.sqrt(jnp.maximum(d, 0.0)), i


def caller_mesh() -> Mesh | AbstractMesh | None:
    """The mesh the caller set with ``jax.set_mesh``: the concrete one eagerly, the abstract
    one under ``jax.jit``; ``None`` when none is set or it holds one device (the bank is then
    not split)."""
    try:
        mesh = jax.sharding.get_mesh()
    except ValueError:  # tracing under jax.jit
        mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or mesh.size == 1 else mesh


def _place(x: jax.Array, mesh: Mesh, spec: P) -> jax.Array:
    """Lay ``x`` out as ``spec`` on ``mesh`` (``reshard`` for explicit axes, else a constraint)."""
    sharding = NamedSharding(mesh, spec)
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


@functools.partial(jax.jit, static_argnames=("k", "query_chunk", "bank_chunk", "mesh", "axis"))
def _knn_sharded(queries, bank, num_valid, *, k, query_chunk, bank_chunk, mesh, axis):
    shard_rows = bank.shape[0] // mesh.shape[axis]

    def local(q, b_local):
        offset = jax.lax.axis_index(axis).astype(jnp.int32) * shard_rows
        d, i = _search(q, b_local, num_valid, offset, k=k, query_chunk=query_chunk,
                       bank_chunk=bank_chunk)
        d_all = jax.lax.all_gather(d, axis, axis=1, tiled=True)  # [Q, shards * k]
        i_all = jax.lax.all_gather(i, axis, axis=1, tiled=True)
        neg, pos = jax.lax.top_k(-d_all, k)
        return -neg, jnp.take_along_axis(i_all, pos, axis=1)

    queries = _place(queries, mesh, P())
    bank = _place(bank, mesh, P(axis))
    d, i = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()),
                         check_vma=False)(queries, bank)
    return jnp.sqrt(jnp.maximum(d, 0.0)), i


def nearest_neighbours(queries: jax.Array, bank: jax.Array, k: int = 1, *,
                       max_block_bytes: int = DEFAULT_BLOCK_BYTES,
                       bank_dtype: jnp.dtype | str | None = None,
                       mesh: Mesh | None = None, axis: str | None = None,
                       ) -> tuple[jax.Array, jax.Array]:
    """Euclidean distances ``[Q, k]`` (ascending) and indices ``[Q, k]`` of the ``k`` nearest rows.

    Args:
      queries: ``[Q, D]`` query vectors.
      bank: ``[M, D]`` memory bank (any float dtype).
      k: neighbours per query, ``1 <= k <= M``.
      max_block_bytes: bound on the float32 distance block computed at once (the peak of the
        search is a small multiple of it plus the bank and the outputs).
      bank_dtype: store the bank in this dtype (e.g. ``"bfloat16"``) before searching.
      mesh: split the bank's rows over ``axis`` of this mesh and reduce across shards.
        Works eagerly and under ``jax.jit``.
      axis: mesh axis name (default: the mesh's first axis).
    """
    queries = jnp.asarray(queries)
    bank = jnp.asarray(bank)
    if queries.ndim != 2 or bank.ndim != 2:
        raise ValueError(f"nearest_neighbours expects queries [Q, D] and bank [M, D]; got shapes "
                         f"{queries.shape} and {bank.shape}")
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features but the bank has "
                         f"{bank.shape[1]}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the bank size {bank.shape[0]}")
    if bank_dtype is not None:
        bank = bank.astype(bank_dtype)
    if queries.shape[0] == 0:
        return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
    if mesh is None:
        qc, bc = chunk_sizes(queries.shape[0], bank.shape[0], k, max_block_bytes,
                             bank.shape[1])
        return _knn_single(queries, bank, k=k, query_chunk=qc, bank_chunk=bc)
    axis = axis or mesh.axis_names[0]
    num_valid = bank.shape[0]
    padded = _pad_rows(bank, mesh.shape[axis])  # shard_map splits the rows over ``axis``
    shard_rows = padded.shape[0] // mesh.shape[axis]
    if k > shard_rows:
        raise ValueError(f"k={k} exceeds the {shard_rows} bank rows held per device; use fewer "
                         "devices or a larger bank")
    qc, bc = chunk_sizes(queries.shape[0], shard_rows, k, max_block_bytes, bank.shape[1])
    return _knn_sharded(queries, padded, jnp.int32(num_valid), k=k, query_chunk=qc,
                        bank_chunk=bc, mesh=mesh, axis=axis)

