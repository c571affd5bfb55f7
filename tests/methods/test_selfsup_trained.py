"""Behaviour: a trained method scores the defects of its test images above their normal pixels
(16 defect-free 64 px synthetic fabric images, tiny configurations, a few epochs of 2 steps).

Measured with seed 0 (pixel AUROC): Deep SVDD 0.696 (4 epochs), FCDD 0.634 (6 epochs); the
thresholds sit below. Not covered here, because at budgets that fit the test suite they do not
localise yet (measured): DRAEM 0.53 after 12 and after 40 epochs (width 8), DRAEM + SSPCAB 0.32
(12 epochs), RIAD 0.38 (8 epochs, width 8), Patch SVDD 0.56 (4 epochs); CutPaste was not
measured (the run hit a buffer-sharing bug since fixed).
"""

from __future__ import annotations

import pytest
from trained_toy import (
    assert_localises,
    train_and_score,
)

from anomjax.methods.one_class import FCDD, DeepSVDD

pytestmark = pytest.mark.slow

# name: (method, category, epochs, minimum pixel AUROC)
CASES = {
    "deep_svdd": (DeepSVDD(widths=(8, 16), rep_dim=16, pretrain_steps=20), "fabric", 4, 0.6),
    "fcdd": (FCDD(head_widths=(16,), learning_rate=1e-2), "fabric", 6, 0.6),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trained_model_scores_defects_above_normal_pixels(name):
    method, category, epochs, min_auroc = CASES[name]
    _, test, scores = train_and_score(method, category=category, image_size=64, n_train=16,
                                      epochs=epochs, batch_size=8)
    assert_localises(test, scores, 64, min_auroc)
