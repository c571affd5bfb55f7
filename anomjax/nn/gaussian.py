"""Per-position multivariate Gaussians of patch features, streamed batch by batch.

PaDiM-style methods model the features seen at every spatial position ``p`` of the normal
training images with a Gaussian ``N(mu_p, Sigma_p + eps I)`` and score a test feature by its
Mahalanobis distance to it. Here the statistics are accumulated one batch at a time with the
parallel (Chan et al.) form of Welford's update: each batch's mean and centred scatter matrix
are merged into the running ones, so float32 stays accurate (no ``sum x x^T - n mu mu^T``
cancellation) and memory never depends on the number of training images.

The covariance itself is never inverted: :func:`finalize` takes the lower Cholesky factor ``L``
of ``Sigma + eps I`` and inverts that triangular factor once (``inv_chol = L^-1``, one
triangular solve per position); :func:`mahalanobis` then computes ``z = L^-1 (x - mu)`` with one
batched matrix product (``Precision.HIGHEST``) and ``d = ||z||``. Scoring a batch by triangular
substitution instead (XLA's batched triangular solve) was many times slower on the CPU
(measured: ``experiments/method_notes.md#nn``). States that hold ``chol`` (fitted before) are
scored by substitution.

Shapes: features are ``[B, *positions, D]``; statistics are ``[*positions, D]`` (means) and
``[*positions, D, D]`` (scatter, Cholesky factors). ``positions`` is usually ``(h, w)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GaussianStats = dict[str, jax.Array]
"""Running statistics: ``count`` (scalar), ``mean`` ``[*P, D]``, ``scatter`` ``[*P, D, D]``."""

Gaussian = dict[str, jax.Array]
"""A fitted Gaussian per position: ``mean`` ``[*P, D]`` and ``inv_chol`` ``[*P, D, D]``, the
inverse of the lower Cholesky factor of the covariance (or ``chol``, the factor itself)."""


def init_stats(positions: tuple[int, ...], dim: int) -> GaussianStats:
    """Empty running statistics for ``positions`` (e.g. ``(h, w)``) and ``dim`` features."""
    return {"count": jnp.zeros((), jnp.float32),
            "mean": jnp.zeros((*positions, dim), jnp.float32),
            "scatter": jnp.zeros((*positions, dim, dim), jnp.float32)}


@jax.jit
def update_stats(stats: GaussianStats | None, features: jax.Array) -> GaussianStats:
    """Merge a batch of features ``[B, *P, D]`` into ``stats`` (Chan's parallel update);
    ``stats=None`` gives the batch's own statistics (as merging into :func:`init_stats`,
    without reading and adding the zero scatter).

    ``scatter`` is the centred sum ``sum_i (x_i - mean)(x_i - mean)^T`` over all images seen.
    """
    x = features.astype(jnp.float32)
    n_batch = jnp.asarray(x.shape[0], jnp.float32)
    batch_mean = jnp.mean(x, axis=0)
    positions, dim = x.shape[1:-1], x.shape[-1]
    # Positions leading ([P, B, D]): the per-position products become one batched matrix
    # product in XLA's canonical layout (measured faster on the CPU than contracting [B, P, D]).
    centred = jnp.swapaxes((x - batch_mean).reshape(x.shape[0], -1, dim), 0, 1)
    batch_scatter = jnp.einsum("pbi,pbj->pij", centred, centred,
                               precision=jax.lax.Precision.HIGHEST).reshape(*positions, dim, dim)
    if stats is None:
        return {"count": n_batch, "mean": batch_mean, "scatter": batch_scatter}
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
    """Mean and inverse lower Cholesky factor of ``covariance(stats, epsilon)`` per position.

    Raises ``ValueError`` with fewer than two samples (the covariance is undefined) and
    ``FloatingPointError`` if a covariance is not positive definite (NaN or infinite input).
    """
    count = int(stats["count"])
    if count < 2:
        raise ValueError(f"a Gaussian needs at least 2 training images, got {count}")
    inv_chol, finite = _inverse_cholesky(covariance(stats, epsilon))
    if not bool(finite):
        raise FloatingPointError(
            "covariance is not positive definite at some positions (the training features "
            "hold NaN or infinite values, or epsilon is 0 with fewer images than dimensions)")
    return {"mean": stats["mean"], "inv_chol": inv_chol}


@jax.jit
def _inverse_cholesky(cov: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``L^-1`` ``[..., D, D]`` of the lower Cholesky factor ``L`` of SPD matrices ``cov``, and
    whether all of it is finite (``[]`` bool)."""
    chol = jnp.linalg.cholesky(cov, symmetrize_input=True)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    return inv_chol, jnp.all(jnp.isfinite(inv_chol))


def mahalanobis(gaussian: Gaussian, features: jax.Array) -> jax.Array:
    """Mahalanobis distance ``[B, *P]`` of features ``[B, *P, D]`` to each position's Gaussian.

    ``||L^-1 (x - mu)||`` with ``inv_chol`` (a batched product at ``Precision.HIGHEST``), or
    by triangular substitution ``L z = x - mu`` with ``chol``. Jittable.
    """
    mean = gaussian["mean"]
    if features.shape[1:] != mean.shape:
        raise ValueError(f"features {features.shape[1:]} per image do not match the fitted "
                         f"Gaussian's {mean.shape} (positions and dimension must agree)")
    diff = features.astype(jnp.float32) - mean  # [B, *P, D]
    if "inv_chol" in gaussian:
        z = jnp.einsum("...ij,b...j->b...i", gaussian["inv_chol"], diff,
                       precision=jax.lax.Precision.HIGHEST)
        return jnp.sqrt(jnp.sum(z * z, axis=-1))
    rhs = jnp.moveaxis(diff, 0, -1)  # [*P, D, B]
    z = jax.scipy.linalg.solve_triangular(gaussian["chol"], rhs, lower=True)
    return jnp.moveaxis(jnp.sqrt(jnp.sum(z * z, axis=-2)), -1, 0)
