"""Parity fixture of MKD against the authors' code.

Reference: ``rohban-lab/Knowledge_Distillation_AD@0c574ae9ad12666982a1ccc2c7148acd6bf442fe``:
``models/network.py::make_arch`` (the cloner: the ``'B'`` configuration's pattern, BatchNorm
on every conv not followed by a max-pool, bias-free), ``loss_functions.py::MseDirectionLoss``
(``sum_l (1 - cos) + lamda * MSE``, MVTec's ``lamda`` 0.5), ``train.py`` (Adam lr 1e-3),
``test_functions.py::detection_test`` (image score) and ``gbp_localization`` (guided
backpropagation through the cloner's ReLUs, the authors' per-image normalisation, Gaussian
sigma 4), at the authors' MVTec size of 128 px.

Source network: the authors' is VGG16, which anomjax does not have, so both sides use a
ResNet-18 source (taps ``layer1..4``, strides 4-32, post-ReLU like VGG's pools), wrapped to
give the 13-entry list the reference's loss indexes at ``[3, 6, 9, 12]``; the cloner follows
the ``'B'`` pattern with the source's channels (64/128/256/512 at the four taps;
``mkd_tree.json`` holds the shipped ``'B'`` cloner for VGG16's channels). The source is seeded
(``distillation_torch``, seed 0); the cloner's weights are stored (seed 1). The fixture keeps
the first 16 channels of each network's tapped maps, and the GBP gradient as ``sum_c |g|``.

The authors' code runs on CUDA: ``Tensor.cuda`` and ``Tensor.to("cuda:0")`` are made no-ops to
run it on the CPU.

Run (the reference is read-only under /tmp/refs, never copied here):

    git --git-dir=<fetch github:rohban-lab/Knowledge_Distillation_AD> archive HEAD \\
        | tar -x -C /tmp/refs/KDAD
    /tmp/venv-ref/bin/python experiments/parity/mkd.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision
from common import (
    gradients,
    nhwc,
    save_fixture,
    save_parameter_tree,
    seed_everything,
    state,
)
from distillation_torch import (
    add_to_path,
    load_seeded,
    optimizer_trace,
    rows,
    sample_images,
)

REFERENCE = ("rohban-lab/Knowledge_Distillation_AD@0c574ae9ad12666982a1ccc2c7148acd6bf442fe "
             "models/network.py, loss_functions.py, train.py, test_functions.py")
SOURCE_SEED, CLONER_SEED = 0, 1
SIZE = 128
CHANNELS = 16  # of the source's and the cloner's maps kept in the fixture
CONFIG = {"lamda": 0.5, "normal_class": "bottle", "dataset_name": "mvtec",
          "direction_loss_only": False}


def cloner_cfg(channels: tuple[int, ...]) -> list:
    """The authors' ``'B'`` configuration with the tap channels ``channels`` (VGG16's:
    128, 256, 512, 512)."""
    c2, c3, c4, c5 = channels
    return [16, 16, "M", 16, c2, "M", 16, 16, c3, "M", 16, 16, c4, "M", 16, 16, c5, "M"]


class ResNetSource(torch.nn.Module):
    """A torchvision ResNet-18 giving ``layer1..4`` at the indices 3, 6, 9, 12 where the
    reference's losses read VGG16's pool2..pool5."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        out: list[torch.Tensor | None] = [None] * 13
        for i, layer in zip((3, 6, 9, 12), (n.layer1, n.layer2, n.layer3, n.layer4),
                            strict=True):
            x = layer(x)
            out[i] = x
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    add_to_path(args.reference_root / "KDAD")
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run
    to = torch.Tensor.to
    torch.Tensor.to = lambda self, *a, **k: self if a and str(a[0]).startswith("cuda") \
        else to(self, *a, **k)
    import test_functions
    from loss_functions import MseDirectionLoss
    from models.network import make_arch
    from test_functions import detection_test, gbp_localization

    seed_everything(0)
    torch.set_num_threads(1)
    save_parameter_tree("mkd", REFERENCE + " cfg 'B'",
                        make_arch("B", {"B": cloner_cfg((128, 256, 512, 512))}, False, True))
    source = ResNetSource()
    load_seeded(source.net, SOURCE_SEED)
    source.eval()
    cloner = make_arch("B", {"B": cloner_cfg((64, 128, 256, 512))}, False, True)
    load_seeded(cloner, CLONER_SEED)
    initial = {k: v.clone() for k, v in cloner.state_dict().items()}
    images = sample_images(0, size=SIZE)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # no normalisation (authors)
    # Our ResNet normalises with ImageNet's statistics inside; the reference source gets the
    # same normalised input through its first layer.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    source_forward = source.forward
    source.forward = lambda inp: source_forward((inp - mean) / std)

    # One training step, as train.py.
    optimizer = torch.optim.Adam(cloner.parameters(), lr=1e-3)
    cloner.train()
    pred = cloner(x)
    with torch.no_grad():
        real = source(x)
    loss = MseDirectionLoss(CONFIG["lamda"])(pred, real)
    optimizer.zero_grad()
    loss.backward()
    grads = gradients(cloner.named_parameters())
    optimizer.step()
    stepped = {k: v.clone() for k, v in cloner.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    trace = optimizer_trace(lambda p: torch.optim.Adam(p, lr=1e-3))

    # Image scores and GBP maps of the initial state, as test_functions.
    cloner.load_state_dict(initial)
    labels = torch.zeros(len(images), dtype=torch.long)
    batch = torch.utils.data.DataLoader(list(zip(x, labels, strict=True)), batch_size=2)
    captured = {}

    def keep_scores(labels_: np.ndarray, scores_: np.ndarray, pos_label: int) -> tuple:
        """``roc_curve`` stand-in that keeps the scores ``detection_test`` computed."""
        captured["scores"] = np.asarray(scores_)
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), None

    roc_curve = test_functions.roc_curve
    test_functions.roc_curve = keep_scores
    detection_test(cloner, source, batch, CONFIG)
    test_functions.roc_curve = roc_curve
    maps = gbp_localization(cloner, source, batch, CONFIG)
    raw = []
    for i in range(len(images)):
        image = x[i:i + 1].clone().requires_grad_(True)
        raw.append(test_functions.GuidedBackprop(cloner, source, "cpu").generate_gradients(
            image, CONFIG, make_single_channel=False)[0])
    outputs = {f"source_layer{i + 1}": nhwc(real[3 * i + 3])[..., :CHANNELS] for i in range(4)}
    outputs.update({f"cloner_{i}": nhwc(pred[3 * i + 3])[..., :CHANNELS] for i in range(4)})
    outputs.update(loss=loss.detach().numpy(), image_scores=captured["scores"], maps=maps,
                   gbp_attribution=np.abs(np.stack(raw)).sum(axis=1),
                   optimizer_trace=trace.pop("after"))
    save_fixture("mkd", REFERENCE, weights=state(cloner),
                 inputs={"images": images, "source_seed": np.array(SOURCE_SEED), **trace},
                 outputs=outputs, grads=rows(grads), stepped=rows(stepped))


if __name__ == "__main__":
    main()
