"""Precise BN: running statistics pooled over batches with the final weights."""

from __future__ import annotations

import numpy as np
import pytest

from anomjax.nn.batch_stats import pooled_batch_stats


def _stats_of(x: np.ndarray) -> dict:
    """Per-channel mean and biased variance of ``x [B, H, W, C]`` for two nested 'layers'."""
    flat = x.reshape(-1, x.shape[-1])
    return {"block": {"bn": {"mean": flat.mean(0), "var": flat.var(0)}},
            "bn_out": {"mean": 2 * flat.mean(0), "var": 4 * flat.var(0)}}


def test_pooling_batches_equals_the_statistics_of_all_images():
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, size=(10, 4, 5, 3)).astype(np.float32)
    # Unequal batches (4, 4, 2) with different means: pooled = statistics of the whole set.
    images[4:8] += 5.0
    pooled = pooled_batch_stats(_stats_of, [images[:4], images[4:8], images[8:]])
    whole = _stats_of(images.astype(np.float64))
    np.testing.assert_allclose(pooled["block"]["bn"]["mean"], whole["block"]["bn"]["mean"],
                               rtol=1e-6)
    np.testing.assert_allclose(pooled["block"]["bn"]["var"], whole["block"]["bn"]["var"],
                               rtol=1e-5)
    np.testing.assert_allclose(pooled["bn_out"]["var"], whole["bn_out"]["var"], rtol=1e-5)
    assert pooled["bn_out"]["mean"].dtype == np.float32


def test_no_batches_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        pooled_batch_stats(_stats_of, [])
