"""Deep SVDD parity fixture: the authors' code,
lukasruff/Deep-SVDD-PyTorch@1901612d595e23675fb75c4ebb563dd0ffebc21e.

Reference files (``src/``): ``networks/cifar10_LeNet.py`` (``CIFAR10_LeNet``: bias-free 5x5
convolutions, affine-free BatchNorm eps 1e-4, leaky ReLU, 2x2 max pooling, bias-free linear
layer) and ``optim/deepSVDD_trainer.py`` (``DeepSVDDTrainer``: ``init_center_c``, ``train``
with Adam and L2 weight decay, the one-class and soft-boundary objectives, ``get_radius``,
``test``).

The network is ``CIFAR10_LeNet`` with its layers replaced by the same layer types at reduced
widths (8, 8, 8 channels, ``rep_dim`` 16; the class's own ``forward`` runs), so that weights,
gradients and stepped parameters fit the fixture; ``deep_svdd_tree.json`` holds the
full-width ``CIFAR10_LeNet``. For each objective, the code's own ``DeepSVDDTrainer`` runs
(``init_center_c``, then ``train`` for one epoch of one batch, then ``test``) on a stand-in
dataset whose loaders yield the fixed batch (``loaders`` is all the trainer reads). The loss
is taken from the trainer's log line (8 decimals); the gradients are left in ``.grad`` by its
last backward pass. For soft-boundary, ``warm_up_n_epochs`` is set to 0 so that the radius
is set after the step, with ``nu`` 0.25.

Run: ``/tmp/venv-ref/bin/python experiments/parity/deep_svdd.py --reference-root /tmp/refs``
with the repository extracted to ``/tmp/refs/deepsvdd``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import numpy as np
import torch
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything, state

REFERENCE = ("lukasruff/Deep-SVDD-PyTorch@1901612d595e23675fb75c4ebb563dd0ffebc21e "
             "src/networks/cifar10_LeNet.py, src/optim/deepSVDD_trainer.py")
WIDTHS, REP_DIM = (8, 8, 8), 16
LEARNING_RATE, WEIGHT_DECAY, NU = 1e-4, 1e-6, 0.25


class Batch:
    """What ``DeepSVDDTrainer`` reads of a dataset: ``loaders`` yielding ``(x, label, idx)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.batches = [(images, labels, torch.arange(len(images)))]

    def loaders(self, batch_size: int, num_workers: int = 0) -> tuple[list, list]:
        return self.batches, self.batches


class LossLog(logging.Handler):
    """Keeps the last ``Loss: <value>`` the trainer logs."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = float("nan")

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r"Loss: ([-0-9.e]+)", record.getMessage())
        if match:
            self.loss = float(match.group(1))


def reduced_lenet(lenet_class: type) -> torch.nn.Module:
    net = lenet_class()
    c_in = 3
    for i, w in enumerate(WIDTHS, 1):
        setattr(net, f"conv{i}", torch.nn.Conv2d(c_in, w, 5, bias=False, padding=2))
        setattr(net, f"bn2d{i}", torch.nn.BatchNorm2d(w, eps=1e-04, affine=False))
        c_in = w
    net.rep_dim = REP_DIM
    net.fc1 = torch.nn.Linear(c_in * 4 * 4, REP_DIM, bias=False)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference_root / "deepsvdd" / "src"))
    from networks.cifar10_LeNet import CIFAR10_LeNet
    from optim.deepSVDD_trainer import DeepSVDDTrainer

    log = LossLog()
    logging.getLogger().addHandler(log)
    logging.getLogger().setLevel(logging.INFO)
    seed_everything(0)
    net0 = reduced_lenet(CIFAR10_LeNet)
    # Running statistics as after some training, so that eval mode differs from train mode.
    for m in net0.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.1, 0.3)
    weights = {k: v.copy() for k, v in state(net0).items()}
    images = torch.rand(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    data = Batch(images, labels)

    outputs: dict[str, np.ndarray] = {}
    grads: dict[str, np.ndarray] = {}
    stepped: dict[str, np.ndarray] = {}
    for objective in ("one-class", "soft-boundary"):
        net = reduced_lenet(CIFAR10_LeNet)
        net.load_state_dict(net0.state_dict())
        trainer = DeepSVDDTrainer(objective, 0.0, None, NU, "adam", LEARNING_RATE, 1, (), 6,
                                  WEIGHT_DECAY, "cpu")
        trainer.warm_up_n_epochs = 0
        if objective == "one-class":  # on a copy: a train-mode pass moves running statistics
            copy = reduced_lenet(CIFAR10_LeNet)
            copy.load_state_dict(net0.state_dict())
            outputs["features_eval"] = copy.eval()(images).detach().numpy()
            outputs["features_train"] = copy.train()(images).detach().numpy()
        trainer.train(data, net)
        outputs[f"{objective}/centre"] = trainer.c.numpy()
        outputs[f"{objective}/loss"] = np.float32(log.loss)
        outputs[f"{objective}/radius"] = trainer.R.numpy()
        grads.update({f"{objective}/{k}": v.copy()
                      for k, v in gradients(net.named_parameters()).items()})
        stepped.update({f"{objective}/{k}": v.copy() for k, v in state(net).items()})
        trainer.test(data, net)
        outputs[f"{objective}/scores"] = np.array([s for _, _, s in trainer.test_scores],
                                                  np.float32)

    save_fixture("deep_svdd", REFERENCE, weights=weights,
                 inputs={"images": nhwc(images), "nu": np.float32(NU)},
                 outputs=outputs, grads=grads, stepped=stepped)
    save_parameter_tree("deep_svdd", REFERENCE, CIFAR10_LeNet())


if __name__ == "__main__":
    main()
