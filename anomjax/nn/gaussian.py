"""Per-position multivariate Gaussians of patch features, streamed batch by batch.

PaDiM-style methods model the features seen at every spatial position ``p`` of the normal
training images with a Gaussian ``N(mu_p, Sigma_p + eps I)`` and score a test feature by its
Mahalanobis distance to it. Here the statistics are accumulated one batch at a time with the
parallel (Chan et al.) form of Welford's update: each batch's mean and centred scatter matrix
are merged into the running ones, so float32 stays accurate (no ``sum x x^T - n mu mu^T``
cancellation) and memory never depends on the number of training images.

The covariance inverse is never formed: :func:`finalize` keeps the lower Cholesky factor
``L`` of ``Sigma + eps I`` and :func:`mahalanobis` solves ``L z = x - mu`` by triangular
substitution, so ``d = ||z||``.

Shapes: features are ``[B, *positions, D]``; statistics are ``[*positions, D]`` (means) and
``[*positions, D, D]`` (scatter, Cholesky factors). ``positions`` is usually ``(h, w)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GaussianStats = dict[str, jax.Array]
"""Running statistics: ``count`` (scalar), ``mean`` ``[*P, D]``, ``scatter`` ``[*P, D, D]``."""

Gaussian = dict[str, jax.Array]
"""A fitted Gaussian per position: ``mean`` ``[*P, D]`` and ``chol`` ``[*P, D, D]`` (lower)."""


def init_stats(positions: tuple[int, ...], dim: int) -> GaussianStats:
    """Empty running statistics for ``positions`` (e.g. ``(h, w)``) and ``dim`` features."""
    return {"count": jnp.zeros((), jnp.float32),
            "mean": jnp.zeros((*positions, dim), jnp.float32),
            "scatter": jnp.zeros((*positions, dim, dim), jnp.float32)}


@jax.jit
def update_stats(stats: GaussianStats, features: jax.Array) -> GaussianStats:
    """Merge a batch of features ``[B, *P, D]`` into ``stats`` (Chan's parallel update).

    ``scatter`` is the centred sum ``sum_i (x_i - mean)(x_i - mean)^T`` over all images seen.
    """
    x = features.astype(jnp.float32)
    n_batch = jnp.asarray(x.shape[0], jnp.float32)
    batch_mean = jnp.mean(x, axis=0)
    centred = x - batch_mean
    batch_scatter = jnp.einsum("b...i,b...j->...ij", centred, centred,
                               precision=jax.lax.Precision.HIGHEST)
    count = stats["count"]
    total = count + n_batch
    delta = batch_mean - stats["mean"]
    mean = stats["mean"] + delta * (n_batch / total)
    cross = jnp.einsum("...i,...j->...ij", delta, delta,
                       precision=jax.lax.Precision.HIGHEST) * (count * n_batch / total)
    return {"count": total, "mean": mean, "scatter": stats["scatter"] + batch_scatter + cross}


def covariance(stats: GaussianStats, epsilon: float = 0.01) -> jax.Array:
    """Unbiased covariance ``scatter / (n - 1) + epsilon I`` ``[*P, D, D]`` (as ``np.cov``)."""
    dim = stats["mean"].shape[-1]
    return stats["scatter"] / (stats["count"] - 1.0) + epsilon * jnp.eye(dim, dtype=jnp.float32)


def finalize(stats: GaussianStats, epsilon: float = 0.01) -> Gaussian:
    """Mean and lower Cholesky factor of ``covariance(stats, epsilon)`` per position.

    Raises ``ValueError`` with fewer than two samples (the covariance is undefined) and
    ``FloatingPointError`` if a covariance is not positive definite (NaN or infinite input).
    """
    count = int(stats["count"])
    if count < 2:
        raise ValueError(f"a Gaussian needs at least 2 training images, got {count}")
    chol = _cholesky(covariance(stats, epsilon))
    if not bool(jnp.all(jnp.isfinite(chol))):
        raise FloatingPointError(
            "covariance is not positive definite at some positions (the training features "
            "hold NaN or infinite values, or epsilon is 0 with fewer images than dimensions)")
    return {"mean": stats["mean"], "chol": chol}


@jax.jit
def _cholesky(cov: jax.Array) -> jax.Array:
    """Batched lower Cholesky factor of ``[..., D, D]`` symmetric positive-definite matrices."""
    return jnp.linalg.cholesky(cov, symmetrize_input=True)


def mahalanobis(gaussian: Gaussian, features: jax.Array) -> jax.Array:
    """Mahalanobis distance ``[B, *P]`` of features ``[B, *P, D]`` to each position's Gaussian.

    Solves ``L z = x - mu`` for every position at once (a batched triangular solve with all
    ``B`` images as right-hand sides) and returns ``||z||``. Jittable.
    """
    mean, chol = gaussian["mean"], gaussian["chol"]
    if features.shape[1:] != mean.shape:
        raise ValueError(f"features {features.shape[1:]} per image do not match the fitted "
                         f"Gaussian's {mean.shape} (positions and dimension must agree)")
    diff = features.astype(jnp.float32) - mean  # [B, *P, D]
    rhs = jnp.moveaxis(diff, 0, -1)  # [*P, D, B]
    z = jax.scipy.linalg.solve_triangular(chol, rhs, lower=True)
    return jnp.moveaxis(jnp.sqrt(jnp.sum(z * z, axis=-2)), -1, 0)
