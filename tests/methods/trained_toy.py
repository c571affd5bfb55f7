"""Train a ``kind="train"`` method briefly on a tiny synthetic category and score its test set."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anomjax.data.synthetic import make_category
from anomjax.train import train_method
from anomjax.types import Batch, Scores


def train_and_score(method: Any, *, category: str = "fabric", image_size: int = 64,
                    n_train: int = 16, epochs: int = 2, batch_size: int = 8,
                    seed: int = 0) -> tuple[dict[str, Any], Batch, Scores]:
    """``(state, test batch, scores)`` after ``epochs`` of training on ``n_train`` images."""
    ds = make_category(category, n_train=n_train, n_test_good=2, n_test_defect=4,
                       image_size=image_size, seed=seed)
    state = train_method(method, jax.random.PRNGKey(seed), ds.train, epochs=epochs,
                         batch_size=batch_size, num_workers=0, disable=True)
    test = ds.test.load_all(num_workers=0)
    scores = jax.jit(method.score)(state, jnp.asarray(test.images))
    return state, test, scores


def defect_contrast(test: Batch, scores: Scores) -> tuple[float, float]:
    """Mean map value on defect pixels and on normal pixels of the defective test images."""
    bad = test.labels == 1
    maps = np.asarray(scores.maps)[bad]
    masks = test.masks[bad].astype(bool)
    return float(maps[masks].mean()), float(maps[~masks].mean())


def pixel_auroc(test: Batch, scores: Scores) -> float:
    """Pixel AUROC over all test pixels (scikit-learn, independent of anomjax.metrics)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(test.masks.ravel(), np.asarray(scores.maps).ravel()))


def assert_localises(test: Batch, scores: Scores, size: int, min_pixel_auroc: float) -> None:
    """Maps are ``[N, size, size]``, higher on defect pixels than on normal ones, and reach
    ``min_pixel_auroc``."""
    assert scores.maps.shape == (len(test), size, size)
    on_defect, off_defect = defect_contrast(test, scores)
    assert on_defect > off_defect
    assert pixel_auroc(test, scores) > min_pixel_auroc
