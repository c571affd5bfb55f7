"""CutPaste parity fixture: the projection head, 3-way loss, one SGD step and the density score.

No official PyTorch code exists; the authors' TensorFlow code
(``google-research/deep_representation_one_class``) is not runnable here (no TensorFlow in
the reference venv, and its training is a TF2 ``tf.distribute`` program). The reference is the
**unofficial** PyTorch port ``Runinho/pytorch-cutpaste@10d8bf71df76d3a97f0106efee1d76f81d983149``
— ``model.py`` (``ProjectionNet``: ResNet-18 embeddings, an MLP head of Linear + BatchNorm1d +
ReLU layers, a linear output), ``run_training.py`` (``CrossEntropyLoss`` over the 3-way batch,
SGD with ``lr=0.03``, ``momentum=0.9``, ``weight_decay=3e-5``), ``eval.py`` + ``density.py``
(L2-normalised embeddings, ``GaussianDensityTorch``: Ledoit-Wolf precision, Mahalanobis
distance).

What is fixed here: the head (reduced widths ``[64] * 8 + [16]`` instead of ``[512] * 8 +
[128]``; the full-width head's tree is in ``cutpaste_tree.json``) on fed 512-d backbone
embeddings of a 3-way batch (labels 0, 1, 2 for normal, CutPaste and scar images); the loss,
the head's gradients, the head after one SGD step; the density's distances of test
embeddings after fitting on training embeddings. The ResNet-18 backbone itself is not in
the fixture (11 M parameters exceed the fixture size; the ResNet port is pinned by the
backbone tests), nor are the CutPaste / scar patches (drawn inside our jitted step; their
statistics are tested in ``tests/data/test_data_anomalies.py``).

    python experiments/parity/cutpaste.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gradients, save_fixture, save_parameter_tree, seed_everything, state  # noqa: E402
from draem import load  # noqa: E402

REFERENCE = ("Runinho/pytorch-cutpaste@10d8bf71df76d3a97f0106efee1d76f81d983149 (unofficial "
             "port) model.py, run_training.py, density.py")
HEAD = [64] * 8 + [16]
BATCH, DIM = 6, 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    root = args.reference_root / "Runinho+pytorch-cutpaste"
    model, density = load(root, "model"), load(root, "density")

    seed_everything(0)
    net = model.ProjectionNet(pretrained=False, head_layers=HEAD, num_classes=3)
    head = torch.nn.ModuleDict({"head": net.head, "out": net.out})
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    weights = state(head)
    rng = np.random.default_rng(0)
    embeds = rng.gamma(2.0, 0.5, size=(3 * BATCH, DIM)).astype(np.float32)  # ReLU-pooled
    labels = np.repeat(np.arange(3), BATCH)

    optimizer = torch.optim.SGD(head.parameters(), lr=0.03, momentum=0.9, weight_decay=3e-5)
    head.train()
    logits = net.out(net.head(torch.tensor(embeds)))
    loss = torch.nn.CrossEntropyLoss()(logits, torch.tensor(labels))
    optimizer.zero_grad()
    loss.backward()
    grads = gradients(head.named_parameters())
    optimizer.step()
    stepped = state(head)

    train = rng.gamma(2.0, 0.5, size=(200, 32)).astype(np.float32)
    test = rng.gamma(2.0, 0.5, size=(8, 32)).astype(np.float32)
    train_n = torch.nn.functional.normalize(torch.tensor(train), p=2, dim=1)
    test_n = torch.nn.functional.normalize(torch.tensor(test), p=2, dim=1)
    gaussian = density.GaussianDensityTorch()
    gaussian.fit(train_n)
    distances = gaussian.predict(test_n)

    save_fixture("cutpaste", REFERENCE, weights=weights,
                 inputs={"embeddings": embeds, "labels": labels, "density_train": train,
                         "density_test": test},
                 outputs={"logits": logits, "loss": loss, "distances": distances},
                 grads=grads, stepped=stepped)
    full = model.ProjectionNet(pretrained=False, num_classes=3)
    save_parameter_tree("cutpaste", REFERENCE,
                        torch.nn.ModuleDict({"head": full.head, "out": full.out}))


if __name__ == "__main__":
    main()
