"""PaDiM parity fixture from anomalib 2.7's ``PadimModel``.

Reference: anomalib 2.7.0 ``anomalib.models.image.padim.torch_model.PadimModel`` (with its
``AnomalyMapGenerator`` and ``MultiVariateGaussian``); the PaDiM authors published no code.
Backbone: timm ``resnet18`` (``pre_trained=False``, ``layers=layer1-3``) loaded with the seeded
random weights of ``feature_modeling_common``, the paper's ``d = 100`` random channels
(anomalib's ``torch.randperm`` draw, stored and fed to anomjax). 8 training and 2 test images
of 64 x 64 px (test images carry a bright square).

Stored outputs: the backbone taps (first 8 channels), the embedding (nearest-upsampled
concatenation, the chosen channels), the fitted mean and the inverse covariance of 6
positions, the Mahalanobis map before upsampling, the bilinear-upsampled map, anomalib's
smoothed map (its ``GaussianBlur2d``, torch "reflect" padding) and the image score (max).

Run: ``/tmp/venv-ref/bin/pip install anomalib==2.7.0`` then
``/tmp/venv-ref/bin/python experiments/parity/padim.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from anomalib.models.image.padim.torch_model import PadimModel
from common import nhwc, save_fixture, seed_everything
from feature_modeling_common import WEIGHT_SEED, normalised, seeded_state_dict, toy_images

REFERENCE = "anomalib 2.7.0 anomalib.models.image.padim.torch_model.PadimModel"
SIZE = 64
POSITIONS = np.array([[0, 0], [0, 15], [5, 7], [8, 8], [15, 0], [15, 15]])
"""Grid positions whose inverse covariance is stored (all 256 would exceed the size limit)."""


def main() -> None:
    seed_everything(0)
    model = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"],
                       pre_trained=False, n_features=100)
    extractor = model.feature_extractor.feature_extractor
    wanted = extractor.state_dict()  # stem and layer1-3 (timm drops the unused layer4)
    weights = {k: v for k, v in seeded_state_dict().items() if k in wanted}
    missing, _ = extractor.load_state_dict(weights, strict=False)
    assert all(k.endswith("num_batches_tracked") for k in missing)
    train = toy_images(8, SIZE, seed=1)
    test = toy_images(2, SIZE, seed=2, defect=True)

    model.train()
    with torch.no_grad():
        model(normalised(train[:5]))
        model(normalised(train[5:]))
    model.fit()
    model.eval()
    x = normalised(test)
    with torch.no_grad():
        taps = model.feature_extractor(x)
        embedding = model.generate_embedding(taps)
        generator = model.anomaly_map_generator
        raw = generator.compute_distance(embedding, [model.gaussian.mean,
                                                     model.gaussian.inv_covariance])
        upsampled = generator.up_sample(raw, (SIZE, SIZE))
        result = model(x)
    inv_cov = model.gaussian.inv_covariance.reshape(16, 16, 100, 100)
    mean = model.gaussian.mean.T.reshape(16, 16, 100)
    outputs = {f"tap_{k}": nhwc(v)[..., :8] for k, v in taps.items()}
    outputs.update({
        "embedding": nhwc(embedding), "mean": mean,
        "inv_covariance": inv_cov[POSITIONS[:, 0], POSITIONS[:, 1]],
        "distance": raw[:, 0], "upsampled": upsampled[:, 0],
        "map": result.anomaly_map[:, 0], "image_score": result.pred_score.reshape(-1)})
    save_fixture("padim", REFERENCE, weights={},
                 inputs={"train": train, "test": test, "weight_seed": np.int64(WEIGHT_SEED),
                         "channel_index": model.idx.numpy().astype(np.int32),
                         "positions": POSITIONS},
                 outputs=outputs)


if __name__ == "__main__":
    main()
