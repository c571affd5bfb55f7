"""Behaviour: a trained method scores the defects of its test images above their normal pixels
(16 defect-free 64 px synthetic images, tiny configurations, a few epochs of 2 steps).

Measured with seed 0 (pixel AUROC): Deep SVDD 0.696 (fabric, 4 epochs), FCDD 0.634 (fabric, 6
epochs); on metal, at learning rate 1e-3 and width 8: DRAEM 0.829 (40 epochs; wood 0.799,
fabric 0.527), DRAEM + SSPCAB 0.829, RIAD 0.960 (40 epochs), CutPaste 0.800 (10 epochs, stage3
features, 32 px patches at stride 8), Patch SVDD 0.774 at 128 px (10 epochs; at 64 px its 64 px
patches are the whole image: 0.387). The thresholds sit below. DRAEM + SSPCAB (0.829 on metal
with the DRAEM settings) is left to the CLI test: its masked convolution triples the time.
"""

from __future__ import annotations

import pytest
from trained_toy import (
    assert_localises,
    train_and_score,
)

from anomjax.methods.one_class import FCDD, DeepSVDD, PatchSVDD
from anomjax.methods.self_supervised import DRAEM, RIAD, CutPaste

pytestmark = pytest.mark.slow

# name: (method, category, epochs, minimum pixel AUROC[, image size (default 64)])
CASES = {
    "deep_svdd": (DeepSVDD(widths=(8, 16), rep_dim=16, pretrain_steps=20), "fabric", 4, 0.6),
    "fcdd": (FCDD(head_widths=(16,), learning_rate=1e-2), "fabric", 6, 0.6),
    # 60 epochs (120 steps): with the authors' zero-filled Perlin masks and zero-padded SSIM
    # the toy reaches 0.61 after 80 steps and 0.95 after 120 (0.88 after 80 before them).
    "draem": (DRAEM(rec_width=8, seg_width=8, learning_rate=1e-3), "metal", 60, 0.7),
    "riad": (RIAD(width=8, depth=3, cell_sizes=(4, 8), learning_rate=1e-3), "metal", 40, 0.8),
    "cutpaste": (CutPaste(tap="stage3", head_widths=(64,), patch_size=32, patch_stride=8),
                 "metal", 10, 0.7),
    # 128 px: at 64 px the 64 px patch scale is the whole image.
    "patch_svdd": (PatchSVDD(dim=16, learning_rate=1e-3, updates_per_step=1, pair_batch=32),
                   "metal", 6, 0.65, 128),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trained_model_scores_defects_above_normal_pixels(name):
    method, category, epochs, min_auroc, *size = CASES[name]
    size = size[0] if size else 64
    _, test, scores = train_and_score(method, category=category, image_size=size, n_train=16,
                                      epochs=epochs, batch_size=8)
    assert_localises(test, scores, size, min_auroc)
