"""Gaussian density estimation of embeddings with Ledoit-Wolf shrinkage (CutPaste's GDE).

CutPaste scores a test embedding by its Mahalanobis distance to a Gaussian fitted on the
training embeddings; the reference implementation (``LilitYolyan/CutPaste``) L2-normalises the
embeddings and shrinks the covariance with scikit-learn's ``LedoitWolf``. :func:`fit_gaussian`
is that estimator (``assume_centered=False``), written in JAX at full precision;
:func:`distance` scores with :func:`anomjax.nn.gaussian.mahalanobis` (triangular substitution
with the stored Cholesky factor ``chol``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from anomjax.nn.gaussian import mahalanobis

HIGHEST = jax.lax.Precision.HIGHEST


def ledoit_wolf(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean [D], covariance [D, D], shrinkage [])`` of samples ``x [N, D]``: scikit-learn's
    ``LedoitWolf().fit(x)`` (biased empirical covariance shrunk towards ``mu I``)."""
    x = x.astype(jnp.float32)
    n, d = x.shape
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    emp = jnp.matmul(xc.T, xc, precision=HIGHEST) / n
    x2 = xc * xc
    trace = jnp.sum(x2, axis=0) / n
    mu = jnp.sum(trace) / d
    beta_ = jnp.sum(jnp.matmul(x2.T, x2, precision=HIGHEST))
    delta_ = jnp.sum(emp * emp)  # = sum((X^T X)^2) / n^2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * jnp.sum(trace) + d * mu * mu) / d
    beta = jnp.minimum(beta, delta)
    shrinkage = jnp.where(beta == 0, 0.0, beta / jnp.where(delta == 0, 1.0, delta))
    cov = (1.0 - shrinkage) * emp + shrinkage * mu * jnp.eye(d, dtype=jnp.float32)
    return mean, cov, shrinkage


def normalize_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of ``x [..., D]`` divided by their L2 norm (PyTorch ``F.normalize``)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def fit_gaussian(embeddings: jax.Array) -> dict[str, jax.Array]:
    """``{"mean" [D], "chol" [D, D]}`` of L2-normalised ``embeddings [N, D]`` (Ledoit-Wolf);
    ``chol`` is the lower Cholesky factor of the covariance."""
    mean, cov, _ = ledoit_wolf(normalize_rows(embeddings))
    d = cov.shape[0]
    return {"mean": mean, "chol": jnp.linalg.cholesky(cov + 1e-10 * jnp.eye(d))}


def distance(gaussian: dict[str, jax.Array], embeddings: jax.Array) -> jax.Array:
    """Mahalanobis distance ``[...]`` of L2-normalised ``embeddings [..., D]`` to the one
    Gaussian of :func:`fit_gaussian` (:func:`anomjax.nn.gaussian.mahalanobis`)."""
    flat = normalize_rows(embeddings).reshape(-1, embeddings.shape[-1])
    return mahalanobis(gaussian, flat).reshape(embeddings.shape[:-1])
