"""Greedy k-center coreset: NumPy reference, covering property, determinism, sharding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from anomjax.nn.coreset import greedy_coreset, mean_anchor_distance, random_projection


def numpy_greedy(x: np.ndarray, n: int, start: int) -> np.ndarray:
    """Textbook greedy k-center (float64): start, then repeatedly the farthest point."""
    x = x.astype(np.float64)
    min_d = np.full(len(x), np.inf)
    chosen = []
    for step in range(n):
        i = start if step == 0 else int(np.argmax(min_d))
        chosen.append(i)
        min_d = np.minimum(min_d, ((x - x[i]) ** 2).sum(1))
        min_d[chosen] = -np.inf
    return np.array(chosen)


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(601, 16)).astype(np.float32)


@pytest.mark.parametrize("steps_per_call", [7, 256])
def test_same_selection_as_numpy(points, steps_per_call):
    got = greedy_coreset(points, 40, start=13, steps_per_call=steps_per_call, disable=True)
    np.testing.assert_array_equal(got.indices, numpy_greedy(points, 40, 13))
    assert got.indices[0] == 13 and len(set(got.indices.tolist())) == 40


def test_anchor_bound_is_the_authors_approximate_sampler(points):
    """``bound`` = mean distance to anchor rows, start = its argmax, the bound kept inside the
    running minimum: patchcore-inspection's ``ApproximateGreedyCoresetSampler`` (float64
    NumPy restatement of its loop; its own code is run in ``test_parity_patchcore.py``)."""
    anchors = np.array([3, 70, 500, 11, 42])
    x = points.astype(np.float64)
    bound = np.sqrt(((x[:, None] - x[anchors][None]) ** 2).sum(-1)).mean(1)
    np.testing.assert_allclose(mean_anchor_distance(points, anchors), bound, rtol=1e-5)
    expected, running = [], bound.copy()
    for _ in range(30):
        expected.append(int(np.argmax(running)))
        running = np.minimum(running, np.sqrt(((x - x[expected[-1]]) ** 2).sum(1)))
    got = greedy_coreset(points, 30, start=int(np.argmax(bound)), bound=bound, disable=True)
    np.testing.assert_array_equal(got.indices, expected)
    assert not np.array_equal(got.indices, numpy_greedy(points, 30, expected[0]))


def test_covering_property(points):
    got = greedy_coreset(points, 25, start=0, disable=True)
    chosen = points[got.indices].astype(np.float64)
    nearest = np.sqrt(((points[:, None, :] - chosen[None]) ** 2).sum(-1)).min(1)
    assert nearest.max() <= got.radius * (1 + 1e-6)
    np.testing.assert_allclose(nearest.max(), got.radius, rtol=1e-5)
    # Greedy k-center is a 2-approximation: every pair of centres is >= radius apart.
    pair = np.sqrt(((chosen[:, None] - chosen[None]) ** 2).sum(-1)) + np.eye(25) * 1e9
    assert pair.min() >= got.radius * (1 - 1e-6)


def test_selects_everything_with_zero_radius():
    x = np.random.default_rng(2).normal(size=(9, 4)).astype(np.float32)
    got = greedy_coreset(x, 9, start=3, disable=True)
    assert sorted(got.indices.tolist()) == list(range(9)) and got.radius == 0.0


def test_deterministic(points):
    a = greedy_coreset(points, 30, start=5, disable=True)
    b = greedy_coreset(points, 30, start=5, disable=True)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.radius == b.radius


def test_random_projection_preserves_distances():
    x = np.random.default_rng(3).normal(size=(50, 512)).astype(np.float32)
    p = np.asarray(x @ random_projection(jax.random.key(0), 512))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(50, 1)]
    dp = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))[np.triu_indices(50, 1)]
    assert np.abs(dp / d - 1).max() < 0.4  # Johnson-Lindenstrauss at 128 dims


def test_bad_arguments(points):
    with pytest.raises(ValueError, match="num_select"):
        greedy_coreset(points, 0)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        greedy_coreset(points[0], 1)


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from anomjax.nn.coreset import greedy_coreset, mean_anchor_distance
    from anomjax.nn.knn import nearest_neighbours
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("bank",))
    x = np.random.default_rng(4).normal(size=(1003, 32)).astype(np.float32)
    one = greedy_coreset(x, 60, start=997, steps_per_call=16, disable=True)
    many = greedy_coreset(x, 60, start=997, mesh=mesh, steps_per_call=16, disable=True)
    assert np.array_equal(one.indices, many.indices), (one.indices, many.indices)
    assert one.radius == many.radius, (one.radius, many.radius)
    bound = np.asarray(mean_anchor_distance(x, np.array([5, 600, 1002])))
    start = int(np.argmax(bound))
    one_b = greedy_coreset(x, 60, start=start, bound=bound, steps_per_call=16, disable=True)
    many_b = greedy_coreset(x, 60, start=start, bound=bound, mesh=mesh, steps_per_call=16,
                            disable=True)
    assert np.array_equal(one_b.indices, many_b.indices), (one_b.indices, many_b.indices)
    bank, q = x[one.indices], np.random.default_rng(5).normal(size=(77, 32)).astype(np.float32)
    d1, i1 = nearest_neighbours(q, bank, 3, max_block_bytes=4 * 64 * 4)
    d8, i8 = nearest_neighbours(q, bank, 3, max_block_bytes=4 * 64 * 4, mesh=mesh)
    assert np.array_equal(np.asarray(i1), np.asarray(i8))
    np.testing.assert_allclose(np.asarray(d1), np.asarray(d8), rtol=1e-6, atol=1e-6)
    print("SHARDED-OK")
""")


@pytest.mark.slow
def test_sharded_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED-OK" in out.stdout
