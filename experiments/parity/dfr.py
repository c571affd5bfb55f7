"""Parity fixture of ``dfr`` (Shi, Yang & Qi, "Unsupervised anomaly segmentation via deep
feature reconstruction", Neurocomputing 2021).

Reference: the authors' code, YoungGod/DFR@f2e2d4ef5e542fb99aa41566cd9f662bec9ce771,
``DFR-source/feature.py`` (``Extractor``: bilinear ``align_corners=True`` resizing of every
layer to the feature-map size, replicate padding, ``AvgFeatAGG2d`` regional averaging, 4 x 4
window at stride 4), ``DFR-source/feat_cae.py`` (``FeatCAE`` with BatchNorm, its MSE loss and
``compute_energy``), and ``DFR-source/anoseg_dfr.py`` (PCA at 90 % of the variance with
scikit-learn on the first batch's ``feat_vec``; ``Adam(lr=1e-4, weight_decay=0)``; one
``optimize_step``; ``score``: eval mode, channel-mean squared error, bilinear
``align_corners=True`` upsampling to the image size).

Backbone: the authors' VGG19 needs ImageNet weights and anomjax has no VGG, so the parity runs
on torchvision's ResNet-18 (``layer1``, ``layer2``) with seeded random weights
(``anomjax/backbones/seeded_weights.py``, imported by path: NumPy only, the test draws the
same) registered in ``feature.backbone_nets``; it gets the ImageNet normalisation the authors'
data loader applies and stays in eval mode (frozen, as anomjax's; the authors' VGG has no
BatchNorm, so their ``extractor.train()`` changes nothing). Its weights are not stored.

Reduced: four 64 x 64 images (PCA on their regional features), the autoencoder in float64
from float32 initial values. Maps and scores are of the state after the step (non-trivial
running statistics).

    git --git-dir=<fetched repo> archive HEAD | tar -x -C /tmp/refs/dfr
    /tmp/venv-ref/bin/python experiments/parity/dfr.py --reference-root /tmp/refs
"""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import reference_checkout  # noqa: E402
from common import REPO, gradients, nhwc, save_fixture, seed_everything, state  # noqa: E402
from torch_step import one_step  # noqa: E402

REFERENCE = ("YoungGod/DFR@f2e2d4ef5e54 DFR-source/feature.py, feat_cae.py, anoseg_dfr.py "
             "(ResNet-18 for VGG19)")
SIZE, BATCH, TAPS, BACKBONE_SEED = 64, 4, ("layer1", "layer2"), 7
LEARNING_RATE = 1e-4
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def seeded_resnet18() -> torch.nn.Module:
    """torchvision ResNet-18 with ``seeded_state_dict(shapes, BACKBONE_SEED)`` weights, eval."""
    spec = importlib.util.spec_from_file_location(
        "seeded_weights", REPO / "anomjax" / "backbones" / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = torchvision.models.resnet18(weights=None)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    weights = module.seeded_state_dict(shapes, BACKBONE_SEED)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    return net.eval()


class ResNetTaps(torch.nn.Module):
    """The interface of the authors' ``VGG19``: ``forward(x, feature_layers) -> {name: map}``
    (images in [0, 1], normalised here as the authors' loader does)."""

    def __init__(self):
        super().__init__()
        self.net = seeded_resnet18().double()

    def train(self, mode: bool = True) -> ResNetTaps:
        return super().train(False)  # frozen: BatchNorm keeps its running statistics

    def forward(self, x: torch.Tensor, feature_layers) -> OrderedDict:
        net = self.net
        x = (x - IMAGENET_MEAN.double()) / IMAGENET_STD.double()
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        out = OrderedDict()
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(net, name)(x)
            if name in feature_layers:
                out[name] = x
            if len(out) == len(feature_layers):
                break
        return out


def main() -> None:
    reference_checkout("dfr/DFR-source", __doc__.splitlines()[0])
    import feature
    from feat_cae import FeatCAE

    seed_everything(0)
    feature.backbone_nets["resnet18"] = ResNetTaps
    extractor = feature.Extractor(backbone="resnet18", cnn_layers=TAPS, upsample="bilinear",
                                  is_agg=True, kernel_size=(4, 4), stride=(4, 4),
                                  featmap_size=(SIZE, SIZE), device="cpu")
    x = torch.rand(BATCH, 3, SIZE, SIZE).double()
    with torch.no_grad():
        feats = extractor(x)
        pca = PCA(n_components=0.90).fit(extractor.feat_vec(x).numpy())
    latent, channels = pca.components_.shape
    print(f"regional features {tuple(feats.shape)}, PCA latent {latent}")

    model = FeatCAE(in_channels=channels, latent_dim=latent, is_bn=True)
    weights = state(model)
    model = model.double()
    model.train()
    loss = model.loss_function(model(feats), feats)
    loss.backward()
    grads = gradients(model.named_parameters())
    stepped, updates = one_step(model, torch.optim.Adam(model.parameters(), lr=LEARNING_RATE,
                                                        weight_decay=0))
    model.eval()
    with torch.no_grad():
        energy = model.compute_energy(model(feats), feats)
        maps = torch.nn.functional.interpolate(energy[:, None], size=(SIZE, SIZE),
                                               mode="bilinear", align_corners=True)[:, 0]
    save_fixture("dfr", REFERENCE, weights=weights, inputs={"images": nhwc(x)},
                 outputs={"regional_features": nhwc(feats), "pca_latent": np.array(latent),
                          "loss": loss.detach(), "map": maps,
                          "score": maps.amax(dim=(1, 2)), **updates},
                 grads=grads, stepped=stepped)


if __name__ == "__main__":
    main()
