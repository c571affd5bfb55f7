"""PatchCore parity fixture from the authors' code, amazon-science/patchcore-inspection.

Reference: amazon-science/patchcore-inspection@fcaa92f124fb1ad74a7acf56726decd4b27cbcad,
``src/patchcore/patchcore.py`` (``PatchCore.load/fit/_embed/_predict``, ``PatchMaker``),
``src/patchcore/common.py`` (``NetworkFeatureAggregator``, ``Preprocessing``/``MeanMapper``,
``Aggregator``, ``FaissNN``, ``NearestNeighbourScorer``, ``RescaleSegmentor``) and
``src/patchcore/sampler.py`` (``ApproximateGreedyCoresetSampler``, the sampler of their
published runs), run unmodified (needs ``faiss-cpu``). Settings as their WR50 run
(``layer2``/``layer3``, patch size 3, D1024-1024, 10 % coreset, ``anomaly_scorer_num_nn=1``)
on the seeded random torchvision ResNet-18 of ``feature_modeling_common`` (a smaller network
than WRN50, the same recipe), 8 training images in two batches and 2 test images of 64 px.

The sampler's two random draws are recorded while it runs: its projection (the
``torch.nn.Linear`` it creates, ``[128, 1024]``) by a recording subclass put in its ``torch.nn``
namespace for the run, and its 10 anchor patches by wrapping ``np.random.choice``; both are
stored and fed to anomjax. The script checks that every bank row is one training feature (the
bank, in selection order, then pins the selection).

Stored outputs: the test patch features ``[B * h * w, 1024]``, the bank (selection order),
the patch scores (squared L2 distances, faiss), the bilinear-upsampled map (their
``RescaleSegmentor`` with smoothing 0), the smoothed map (sigma 4) and the image scores.

The paper's image score (Eq. 7, our default ``scoring="paper"``) is not in the authors' code;
its reference is anomalib 2.7.0 ``PatchcoreModel.compute_anomaly_score`` (``num_neighbors=9``,
Euclidean distances), evaluated on the authors' test features and bank (stored as
``image_score_eq7``).

Run: ``/tmp/venv-ref/bin/pip install faiss-cpu anomalib==2.7.0`` then
``/tmp/venv-ref/bin/python experiments/parity/patchcore.py --reference-root /tmp/refs/fm``
with the repository extracted at ``<root>/amazon-science+patchcore-inspection``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from common import save_fixture, seed_everything
from feature_modeling_common import WEIGHT_SEED, normalised, seeded_resnet18, toy_images

COMMIT = "fcaa92f124fb1ad74a7acf56726decd4b27cbcad"
REFERENCE = (f"amazon-science/patchcore-inspection@{COMMIT} src/patchcore/"
             "{patchcore,common,sampler}.py")
SIZE = 64


class RecordingLinear(torch.nn.Linear):
    """``torch.nn.Linear`` that keeps every instance (the sampler's random projection)."""

    created: list[torch.nn.Linear] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingLinear.created.append(self)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs/fm"))
    root = parser.parse_args().reference_root / "amazon-science+patchcore-inspection"
    sys.path.insert(0, str(root / "src"))
    import patchcore.common
    import patchcore.patchcore
    import patchcore.sampler

    seed_everything(0)
    device = torch.device("cpu")
    model = patchcore.patchcore.PatchCore(device)
    model.load(seeded_resnet18(), ["layer2", "layer3"], device, (3, SIZE, SIZE), 1024, 1024,
               patchsize=3, anomaly_score_num_nn=1,
               featuresampler=patchcore.sampler.ApproximateGreedyCoresetSampler(0.1, device),
               nn_method=patchcore.common.FaissNN(False, 1))
    train = toy_images(8, SIZE, seed=1)
    test = toy_images(2, SIZE, seed=2, defect=True)

    anchors: list[list[int]] = []
    choice = np.random.choice

    def recording_choice(*args, **kwargs):
        drawn = choice(*args, **kwargs)
        anchors.append(list(drawn))
        return drawn

    np.random.choice, patchcore.sampler.torch.nn.Linear = recording_choice, RecordingLinear
    try:
        model.fit([normalised(train[:5]), normalised(train[5:])])
    finally:
        np.random.choice, patchcore.sampler.torch.nn.Linear = choice, torch.nn.Linear
    (projection,), (anchor,) = RecordingLinear.created, anchors

    train_features = np.asarray(model._embed(normalised(train)))
    bank = model.anomaly_scorer.detection_features
    matches = [np.flatnonzero((train_features == row).all(axis=1)) for row in bank]
    assert all(len(m) == 1 for m in matches), "bank rows must be training features"
    x = normalised(test)
    features = np.asarray(model._embed(x))
    patch_scores = model.anomaly_scorer.predict([features])[0].reshape(len(test), 8, 8)
    plain = copy.copy(model.anomaly_segmentor)
    plain.smoothing = 0
    image_scores, maps = model._predict(x)
    eq7 = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False,
                         num_neighbors=9)
    eq7.memory_bank = torch.from_numpy(bank)
    distance, location = eq7.nearest_neighbors(torch.from_numpy(features), n_neighbors=1)
    image_eq7 = eq7.compute_anomaly_score(distance.reshape(len(test), -1),
                                          location.reshape(len(test), -1),
                                          torch.from_numpy(features))
    save_fixture("patchcore", REFERENCE, weights={},
                 inputs={"train": train, "test": test, "weight_seed": np.int64(WEIGHT_SEED),
                         "projection": projection.weight, "anchors": np.array(anchor)},
                 outputs={"features": features, "bank": bank, "patch_scores": patch_scores,
                          "upsampled": np.stack(plain.convert_to_segmentation(patch_scores)),
                          "map": np.stack(maps), "image_score": np.array(image_scores),
                          "image_score_eq7": image_eq7})


if __name__ == "__main__":
    main()
