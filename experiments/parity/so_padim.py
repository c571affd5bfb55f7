"""Semi-orthogonal PaDiM parity fixture from Pangoraw/SemiOrthogonal.

Reference: Pangoraw/SemiOrthogonal@0db2717bf48b5d1a4e046ecffba4cc0b753d8f09,
``semi_orthogonal/semi_orthogonal.py`` (``SemiOrthogonal``: ``_generate_W``, streaming
``train_one_batch``, ``finalize_training``, ``predict``), an unofficial re-implementation:
the authors (Kim et al. 2021) published no code and anomalib 2.7 has no semi-orthogonal PaDiM.
Its backbone wrapper builds ``torchvision.models.resnet18(pretrained=True)``; the script
replaces that builder (in the wrapper's module) by the seeded random ResNet-18 of
``feature_modeling_common``. ``k = 100`` (the paper's ResNet-18 setting), ``W`` drawn by the
reference (stored, fed to anomjax), 8 training images in two batches, 2 test images, 64 px.

Stored outputs: ``W``, the test embedding ``W^T x`` ``[B, h, w, k]``, the fitted means, the
inverse covariances of 6 positions and the Mahalanobis map of each test image (the
reference's ``predict``; it has no upsampling or smoothing, only its example script does).

Run: ``/tmp/venv-ref/bin/python experiments/parity/so_padim.py --reference-root /tmp/refs``
with the repository extracted at ``<root>/Pangoraw+SemiOrthogonal``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import save_fixture, seed_everything
from feature_modeling_common import WEIGHT_SEED, normalised, seeded_resnet18, toy_images

COMMIT = "0db2717bf48b5d1a4e046ecffba4cc0b753d8f09"
REFERENCE = f"Pangoraw/SemiOrthogonal@{COMMIT} semi_orthogonal/semi_orthogonal.py"
SIZE = 64
K = 100
POSITIONS = np.array([[0, 0], [0, 15], [5, 7], [8, 8], [15, 0], [15, 15]])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs/fm"))
    root = parser.parse_args().reference_root / "Pangoraw+SemiOrthogonal"
    sys.path.insert(0, str(root))
    import semi_orthogonal.backbones.base as base
    from semi_orthogonal import SemiOrthogonal

    base.resnet18 = lambda pretrained: seeded_resnet18()  # no download: the seeded weights
    seed_everything(0)
    model = SemiOrthogonal(k=K, device="cpu", backbone="resnet18", size=(SIZE, SIZE))
    train = toy_images(8, SIZE, seed=1)
    test = toy_images(2, SIZE, seed=2, defect=True)
    model.train_one_batch(normalised(train[:5]))
    model.train_one_batch(normalised(train[5:]))
    model.finalize_training()
    x = normalised(test)
    with torch.no_grad():
        embedding = model._embed_batch(x).permute(3, 0, 1, 2)  # [B, h, w, k]
        distance = torch.cat([model.predict(x[i:i + 1]) for i in range(len(x))])
    h, w = distance.shape[1:]
    inv_cov = model.covs_inv.reshape(h, w, K, K)
    save_fixture("so_padim", REFERENCE, weights={},
                 inputs={"train": train, "test": test, "weight_seed": np.int64(WEIGHT_SEED),
                         "W": model.W, "positions": POSITIONS},
                 outputs={"embedding": embedding, "mean": model.real_means.reshape(h, w, K),
                          "inv_covariance": inv_cov[POSITIONS[:, 0], POSITIONS[:, 1]],
                          "distance": distance})


if __name__ == "__main__":
    main()
