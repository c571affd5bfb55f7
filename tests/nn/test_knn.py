"""Chunked nearest-neighbour search against a NumPy brute force."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.nn.knn import chunk_sizes, nearest_neighbours


def brute_force(queries: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 distances and indices ``[Q, k]`` of the ``k`` nearest rows (stable ties)."""
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None, :, :]) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(203, 12)).astype(np.float32),
            rng.normal(size=(157, 12)).astype(np.float32))


@pytest.mark.parametrize("max_block_bytes", [4 * 64 * 10, 4 * 1000, 2**26])
@pytest.mark.parametrize("k", [1, 5])
def test_matches_brute_force(data, max_block_bytes, k):
    queries, bank = data
    dist, idx = nearest_neighbours(queries, bank, k, max_block_bytes=max_block_bytes)
    ref_d, ref_i = brute_force(queries, bank, k)
    np.testing.assert_array_equal(np.asarray(idx), ref_i)
    np.testing.assert_allclose(np.asarray(dist), ref_d, rtol=1e-5, atol=1e-5)


def test_chunks_respect_memory_bound():
    qc, bc = chunk_sizes(100_000, 50_000, 9, max_block_bytes=2**20)
    assert qc * bc * 4 <= 2**20 and bc >= 9
    qc, bc = chunk_sizes(10, 20, 3, max_block_bytes=2**30)
    assert (qc, bc) == (10, 20)


def test_ties_go_to_lower_index():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    _, idx = nearest_neighbours(np.zeros((1, 2), np.float32), bank, 4, max_block_bytes=4 * 64)
    np.testing.assert_array_equal(np.asarray(idx), [[0, 1, 2, 3]])
    for block in (4 * 64, 2**20):  # one bank row per chunk, and one chunk
        _, idx = nearest_neighbours(np.array([[1.0, 0.0]], np.float32), bank[1:], 1,
                                    max_block_bytes=block)  # rows 1 and 2 of bank[1:] tie
        np.testing.assert_array_equal(np.asarray(idx), [[1]])


def test_bfloat16_bank_small_error(data):
    queries, bank = data
    ref_d, ref_i = brute_force(queries, bank, 1)
    dist, idx = nearest_neighbours(queries, bank, 1, bank_dtype="bfloat16")
    assert nearest_neighbours(queries, jnp.asarray(bank, jnp.bfloat16), 1)[0].dtype == jnp.float32
    rel = np.abs(np.asarray(dist) - ref_d) / ref_d
    assert rel.max() < 2e-2  # bf16 keeps 8 mantissa bits: ~0.4 % per coordinate
    assert (np.asarray(idx) == ref_i).mean() > 0.9


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="features"):
        nearest_neighbours(np.zeros((3, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="k=6"):
        nearest_neighbours(np.zeros((3, 4)), np.zeros((5, 4)), 6)
    with pytest.raises(ValueError, match=r"\[Q, D\]"):
        nearest_neighbours(np.zeros((3,)), np.zeros((5, 4)))


@pytest.mark.parametrize("k", [1, 3])
def test_returned_distances_are_exact_far_from_the_origin(k):
    """Near neighbours of large vectors: ``|q|^2 - 2 q.b + |b|^2`` cancels in float32 (error
    about ``eps |q|^2``); the returned distances are recomputed from the differences."""
    rng = np.random.default_rng(5)
    bank = (300.0 + rng.normal(size=(64, 16))).astype(np.float32)
    queries = (bank[:10] + 0.01 * rng.normal(size=(10, 16))).astype(np.float32)
    dist, idx = nearest_neighbours(queries, bank, k)
    want_d, want_i = brute_force(queries, bank, k)
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], np.arange(10))
    np.testing.assert_array_equal(np.asarray(idx), want_i)
    np.testing.assert_allclose(np.asarray(dist), want_d, rtol=1e-4)
