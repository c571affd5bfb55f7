"""FCDD parity fixture: the authors' code, liznerski/fcdd@4fa850215792b5f4a3405151e30127a5b67dc3b6.

Reference files (``python/fcdd/``): ``models/fcdd_cnn_224.py`` (``FCDD_CNN224_VGG_F``: VGG11-BN
frozen up to ``features[15]``; the trainable part ``features[15:21]`` = [conv 3x3, BatchNorm,
ReLU] x 2 and ``conv_final`` 1x1), ``training/fcdd.py`` (``FCDDTrainer.loss``: pseudo-Huber
heatmap and the hypersphere-classifier loss of ``malformed_normal``), ``training/setup.py``
(``pick_opt_sched``: SGD, Nesterov momentum 0.9, ``LambdaLR`` 0.985^epoch),
``runners/argparse_configs.py`` (``DefaultMvtecConfig``: lr 1e-3, weight decay 1e-4),
``models/bases.py`` (``receptive_upsample``), ``datasets/noise_modes.py`` (confetti noise) and
``datasets/online_supervisor.py`` (``__malformed_normal``: add, clamp, invert rule).

What is written (``tests/fixtures/parity/fcdd.npz``):

* the trainable part of ``FCDD_CNN224_VGG_F`` at reduced widths (8 input channels, 16, 16;
  the code's are 256, 512, 512), built from the same torch layers in the same order and
  under the code's state-dict names (``features.15`` ... ``features.19``, ``conv_final``):
  its output on fixed features, the ``FCDDTrainer`` loss with image labels, every gradient,
  the parameters and BatchNorm running statistics after one ``pick_opt_sched`` SGD step,
  and the eval-mode heatmap and image score (``reduce_ascore``);
* ``FCDD_CNN224.receptive_upsample`` (receptive field 59, jump 8 at 64 px) of that heatmap;
* darkening blob noise (squares coloured from ``randint(-256, 0)`` per channel, the
  ``colorrange`` of the code's confetti, smoothed by the code's ``smooth_noise(25, 5)``) and
  the images it malforms through ``OnlineSupervisor.__malformed_normal`` (one black image
  triggers the invert rule). The code's ``confetti_noise`` itself does not run on current
  torch (it indexes a tensor with a 2-D NumPy array, which torch >= 1.x no longer reads as a
  tuple of indices), so the blobs are drawn here.

``fcdd_tree.json``: the full-width trainable part of the code's own ``FCDD_CNN224_VGG_NOPT``.

Compatibility shims for the 2020 code on current packages (no behaviour change):
``np.infty`` (removed in NumPy 2), ``scipy.signal.gaussian`` (moved to
``scipy.signal.windows``), ``kornia.gaussian_blur2d`` (moved to ``kornia.filters``).

Run: ``/tmp/venv-ref/bin/python experiments/parity/fcdd.py --reference-root /tmp/refs``
with the repository extracted to ``/tmp/refs/fcdd``.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import kornia
import kornia.filters
import numpy as np
import scipy.signal
import scipy.signal.windows
import torch
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything, state

REFERENCE = ("liznerski/fcdd@4fa850215792b5f4a3405151e30127a5b67dc3b6 "
             "python/fcdd/models/fcdd_cnn_224.py, training/fcdd.py, datasets/noise_modes.py")
WIDTHS = (16, 16)
IN_CHANNELS = 8
LEARNING_RATE, WEIGHT_DECAY = 1e-3, 1e-4


def shim() -> None:
    np.infty = np.inf  # noqa: NPY201 (the 2020 code reads it)
    scipy.signal.gaussian = scipy.signal.windows.gaussian
    kornia.gaussian_blur2d = kornia.filters.gaussian_blur2d


class Tail(torch.nn.Module):
    """``features[15:21]`` and ``conv_final`` of ``FCDD_CNN224_VGG_F`` at ``WIDTHS``."""

    def __init__(self, c_in: int, widths: tuple[int, int]):
        super().__init__()
        layers: list[tuple[str, torch.nn.Module]] = []
        index = 15
        for w in widths:
            layers += [(str(index), torch.nn.Conv2d(c_in, w, 3, 1, 1)),
                       (str(index + 1), torch.nn.BatchNorm2d(w)),
                       (str(index + 2), torch.nn.ReLU(True))]
            c_in, index = w, index + 3
        self.features = torch.nn.Sequential(OrderedDict(layers))
        self.conv_final = torch.nn.Conv2d(c_in, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_final(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference_root / "fcdd" / "python"))
    shim()
    from fcdd.datasets.noise import smooth_noise
    from fcdd.datasets.online_supervisor import OnlineSupervisor
    from fcdd.models.fcdd_cnn_224 import FCDD_CNN224, FCDD_CNN224_VGG_NOPT
    from fcdd.training.fcdd import FCDDTrainer
    from fcdd.training.setup import pick_opt_sched

    seed_everything(0)
    tail = Tail(IN_CHANNELS, WIDTHS)
    for m in tail.modules():  # non-trivial BatchNorm affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    weights = {k: v.copy() for k, v in state(tail).items()}  # state() shares the memory
    feats = torch.randn(4, IN_CHANNELS, 6, 6)
    labels = torch.tensor([0, 1, 0, 1])

    trainer = FCDDTrainer.__new__(FCDDTrainer)  # only the loss is used: no data, no logger
    trainer.objective, trainer.net = "fcdd", tail
    tail.train()
    out = tail(feats)
    loss = trainer.loss(out, feats, labels)
    loss.backward()
    grads = {k: v for k, v in gradients(tail.named_parameters()).items()}
    opt, _ = pick_opt_sched(tail, LEARNING_RATE, WEIGHT_DECAY, [0.985], "sgd", "lambda")
    opt.step()
    stepped = state(tail)  # parameters and the running statistics of the forward above

    tail.eval()
    with torch.no_grad():
        heat = trainer.loss(tail(feats), feats, labels, reduce="none")  # [B, 1, h, w]
        score = trainer.reduce_ascore(heat)
        small = FCDD_CNN224((3, 64, 64), bias=True)
        heat8 = torch.rand(2, 1, 8, 8)
        std = 12 * 64 / 224
        upsampled = small.receptive_upsample(heat8, std=std)
    reception = small.reception

    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    images[3] = 0  # darkening changes nothing: the invert rule
    noise = torch.zeros(images.shape, dtype=torch.int32)
    for i in range(4):
        for _ in range(2):
            y, x = (int(v) for v in torch.randint(0, 48, (2,)))
            side = int(torch.randint(8, 20, ()))
            noise[i, :, y:y + side, x:x + side] = torch.randint(-256, 0, (3, 1, 1),
                                                                dtype=torch.int32)
    noise = smooth_noise(noise, 25, 5, 1.0)
    supervisor = OnlineSupervisor.__new__(OnlineSupervisor)
    malformed = torch.stack([supervisor._OnlineSupervisor__malformed_normal(
        images[i:i + 1], None, 1, None, noise[i:i + 1].clone())[0][0] for i in range(4)])

    save_fixture(
        "fcdd", REFERENCE, weights=weights,
        inputs={"features": nhwc(feats), "labels": labels.numpy().astype(np.int32),
                "heat8": heat8[:, 0].numpy(),
                "reception": np.array([reception["r"], reception["j"], int(reception["s"])],
                                      np.int32),
                "gauss_std": np.float32(std),
                "images": nhwc(images.float()), "confetti": nhwc(noise.float())},
        outputs={"head": out[:, 0].detach().numpy(), "loss": loss.detach().numpy(),
                 "heatmap": heat[:, 0].numpy(), "score": score.numpy(),
                 "upsampled": upsampled[:, 0].numpy(), "malformed": nhwc(malformed.float())},
        grads=grads, stepped=stepped)

    full = FCDD_CNN224_VGG_NOPT((3, 224, 224), bias=True)
    trainable = torch.nn.Module()
    trainable.features, trainable.conv_final = full.features[15:], full.conv_final
    save_parameter_tree("fcdd", REFERENCE, trainable)


if __name__ == "__main__":
    main()
