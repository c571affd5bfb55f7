"""Streamed per-position Gaussians and Mahalanobis distances against a NumPy reference."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from anomjax.nn import gaussian


def _reference(train: np.ndarray, test: np.ndarray, epsilon: float) -> np.ndarray:
    """Float64 Mahalanobis per position with an explicit inverse (the PaDiM paper's recipe)."""
    b, h, w, d = test.shape
    out = np.zeros((b, h, w))
    for i in range(h):
        for j in range(w):
            cov = np.cov(train[:, i, j].astype(np.float64), rowvar=False) + epsilon * np.eye(d)
            inv = np.linalg.inv(cov)
            diff = test[:, i, j].astype(np.float64) - train[:, i, j].astype(np.float64).mean(0)
            out[:, i, j] = np.sqrt(np.einsum("bi,ij,bj->b", diff, inv, diff))
    return out


def _fit(train: np.ndarray, batch_size: int, epsilon: float = 0.01) -> gaussian.Gaussian:
    stats = gaussian.init_stats(train.shape[1:3], train.shape[3])
    for start in range(0, len(train), batch_size):
        stats = gaussian.update_stats(stats, train[start:start + batch_size])
    return gaussian.finalize(stats, epsilon)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8))  # correlated features
    train = (rng.normal(size=(23, 3, 4, 8)) @ mixing + 2.0).astype(np.float32)
    test = (rng.normal(size=(5, 3, 4, 8)) @ mixing * 1.5 + 2.0).astype(np.float32)
    return train, test


@pytest.mark.parametrize("jit", [False, True])
def test_mahalanobis_matches_numpy_inverse(data, jit):
    train, test = data
    fitted = _fit(train, batch_size=7)
    fn = jax.jit(gaussian.mahalanobis) if jit else gaussian.mahalanobis
    dist = np.asarray(fn(fitted, test))
    np.testing.assert_allclose(dist, _reference(train, test, 0.01), rtol=2e-4, atol=1e-4)


def test_streaming_equals_one_batch_and_numpy_moments(data):
    train, _ = data
    streamed = gaussian.init_stats((3, 4), 8)
    for start in range(0, 23, 4):
        streamed = gaussian.update_stats(streamed, train[start:start + 4])
    whole = gaussian.update_stats(gaussian.init_stats((3, 4), 8), train)
    chex.assert_trees_all_close(streamed, whole, rtol=1e-5, atol=1e-4)
    from_none = gaussian.update_stats(None, train[:4])  # no zero statistics to start from
    for start in range(4, 23, 4):
        from_none = gaussian.update_stats(from_none, train[start:start + 4])
    chex.assert_trees_all_close(from_none, whole, rtol=1e-5, atol=1e-4)
    assert float(streamed["count"]) == 23
    np.testing.assert_allclose(np.asarray(streamed["mean"]), train.mean(0), rtol=1e-5, atol=1e-5)
    cov = np.asarray(gaussian.covariance(streamed, 0.0))
    ref = np.cov(train[:, 1, 2].astype(np.float64), rowvar=False)
    np.testing.assert_allclose(cov[1, 2], ref, rtol=1e-4, atol=1e-4)


def test_float32_stays_accurate_far_from_the_origin():
    """A large common offset would cancel catastrophically in ``sum x x^T - n mu mu^T``."""
    rng = np.random.default_rng(1)
    train = (rng.normal(size=(64, 1, 2, 3)) * 0.1 + 1000.0).astype(np.float32)
    stats = gaussian.init_stats((1, 2), 3)
    for start in range(0, 64, 8):
        stats = gaussian.update_stats(stats, train[start:start + 8])
    cov = np.asarray(gaussian.covariance(stats, 0.0))
    ref = np.cov(train[:, 0, 0].astype(np.float64), rowvar=False)
    np.testing.assert_allclose(cov[0, 0], ref, rtol=1e-3, atol=1e-6)


def test_inverse_cholesky_factor_whitens_the_covariance(data):
    train, queries = data
    fitted = _fit(train, batch_size=23)
    inv = np.asarray(fitted["inv_chol"], np.float64)
    assert np.allclose(np.triu(inv[0, 0], 1), 0.0)
    cov = np.cov(train[:, 0, 0].astype(np.float64), rowvar=False) + 0.01 * np.eye(8)
    np.testing.assert_allclose(inv[0, 0] @ cov @ inv[0, 0].T, np.eye(8), atol=1e-4)
    # a state holding the factor itself (fitted before) scores the same by substitution
    chol = {"mean": fitted["mean"], "chol": np.linalg.inv(inv).astype(np.float32)}
    np.testing.assert_allclose(np.asarray(gaussian.mahalanobis(chol, queries)),
                               np.asarray(gaussian.mahalanobis(fitted, queries)), rtol=1e-4)


def test_epsilon_keeps_rank_deficient_covariance_solvable():
    """Fewer images than dimensions: only the 0.01 I ridge makes the covariance invertible."""
    train = np.random.default_rng(2).normal(size=(3, 1, 1, 6)).astype(np.float32)
    fitted = _fit(train, batch_size=3)
    dist = np.asarray(gaussian.mahalanobis(fitted, train))
    assert np.isfinite(dist).all()
    np.testing.assert_allclose(dist, _reference(train, train, 0.01), rtol=1e-3, atol=1e-3)


def test_clear_errors():
    one = np.zeros((1, 2, 2, 3), np.float32)
    stats = gaussian.update_stats(gaussian.init_stats((2, 2), 3), one)
    with pytest.raises(ValueError, match="at least 2 training images"):
        gaussian.finalize(stats)
    nan = np.full((4, 2, 2, 3), np.nan, np.float32)
    stats = gaussian.update_stats(gaussian.init_stats((2, 2), 3), nan)
    with pytest.raises(FloatingPointError, match="not positive definite"):
        gaussian.finalize(stats)
    fitted = _fit(np.random.default_rng(3).normal(size=(4, 2, 2, 3)).astype(np.float32), 4)
    with pytest.raises(ValueError, match="do not match"):
        gaussian.mahalanobis(fitted, np.zeros((1, 3, 2, 3), np.float32))
