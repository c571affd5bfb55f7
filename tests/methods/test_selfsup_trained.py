"""Behaviour: each self-supervised and one-class method, trained briefly on 16 defect-free
64 px synthetic images, scores the defects of its test images above their normal pixels.

Tiny configurations (a few hundred to a few thousand parameters per layer, 2 to 12 epochs of
2 steps); the thresholds sit below the values measured with seed 0 (in each case's note).
"""

from __future__ import annotations

import pytest
from trained_toy import (
    assert_localises,
    defect_contrast,
    pixel_auroc,
    train_and_score,
)

from anomjax.methods.one_class import FCDD, DeepSVDD, PatchSVDD
from anomjax.methods.self_supervised import DRAEM, RIAD, CutPaste

pytestmark = pytest.mark.slow

# name: (method, category, epochs, minimum pixel AUROC)
CASES = {
    "draem": (DRAEM(rec_width=8, seg_width=8, learning_rate=1e-3), "fabric", 12, 0.6),
    "draem_sspcab": (DRAEM(rec_width=8, seg_width=8, learning_rate=1e-3, sspcab=True),
                     "fabric", 12, 0.6),
    "riad": (RIAD(width=8, depth=3, learning_rate=1e-3), "fabric", 8, 0.6),
    "cutpaste": (CutPaste(tap="stage3", head_widths=(32,), patch_size=32, patch_stride=8,
                          learning_rate=0.01), "fabric", 4, 0.6),
    "patch_svdd": (PatchSVDD(dim=16, pairs_per_image=2, stride_32=4, learning_rate=1e-3),
                   "fabric", 4, 0.6),
    "deep_svdd": (DeepSVDD(widths=(8, 16), rep_dim=16, pretrain_steps=20), "fabric", 4, 0.55),
    "fcdd": (FCDD(head_widths=(16,), learning_rate=1e-2), "fabric", 6, 0.6),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trained_model_scores_defects_above_normal_pixels(name):
    method, category, epochs, min_auroc = CASES[name]
    _, test, scores = train_and_score(method, category=category, image_size=64, n_train=16,
                                      epochs=epochs, batch_size=8)
    print(name, "pixel AUROC", pixel_auroc(test, scores), "contrast",
          defect_contrast(test, scores))
    assert_localises(test, scores, 64, min_auroc)
