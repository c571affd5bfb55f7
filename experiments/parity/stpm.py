"""Parity fixture of STPM against the authors' code.

Reference: ``gdwang08/STFPM@2598a5e35fd02f2f9dcfd0f3e8249adc22320e59`` ``main.py`` (the first
author's repository): ``ResNet18_MS3`` (torchvision ResNet-18 without layer4's use, taps
``layer1..3``), ``train_val`` (the loss ``sum_l mean_{b,h,w} ||t_hat - s_hat||^2``, SGD lr 0.4,
momentum 0.9, weight decay 1e-4, student in train mode) run for one epoch of one batch, and
``test`` (per-level maps bilinearly upsampled to 64 x 64, multiplied; the image score is the
map's maximum, as ``main``). 64 px inputs, so the authors' 64 x 64 maps are at input size.

The authors' code runs on CUDA: ``Tensor.cuda``/``Module.cuda`` are made no-ops to run it on
the CPU. ``train_val`` keeps its loss and gradients to itself, so ``Tensor.backward`` is wrapped
to keep the loss and every parameter's ``.grad`` is read when ``SGD.step`` is called; its
checkpoint goes to a temporary folder. Weights are seeded (``distillation_torch``; teacher
seed 0, student seed 1, drawn under torchvision's names), so the fixture stores none;
gradients and stepped parameters are the first rows of every tensor, under torchvision's
names (``ResNet18_MS3`` numbers the children: ``model.0`` = ``conv1``, ``model.4`` =
``layer1``, ...). ``layer4`` runs in the authors' forward but not in the loss (no gradient).

Run (the reference is read-only under /tmp/refs, never copied here):

    git --git-dir=<fetch github:gdwang08/STFPM> archive HEAD | tar -x -C /tmp/refs/STFPM
    /tmp/venv-ref/bin/python experiments/parity/stpm.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import nhwc, save_fixture, seed_everything
from distillation_torch import (
    add_to_path,
    imagenet_normalised,
    optimizer_trace,
    rows,
    sample_images,
    seeded_state_dict,
)

REFERENCE = "gdwang08/STFPM@2598a5e35fd02f2f9dcfd0f3e8249adc22320e59 main.py::train_val/test"
TEACHER_SEED, STUDENT_SEED = 0, 1
CHILDREN = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def torchvision_name(name: str) -> str:
    """``model.4.0.conv1.weight`` -> ``layer1.0.conv1.weight``."""
    child, rest = name.removeprefix("model.").split(".", 1)
    return {v: k for k, v in CHILDREN.items()}[child] + "." + rest


def load_seeded_resnet(net: torch.nn.Module, seed: int) -> None:
    """Seeded weights drawn under the full torchvision ResNet-18's names (the tests draw them
    the same way), loaded into ``ResNet18_MS3``."""
    import torchvision

    shapes = {k: tuple(v.shape) for k, v in torchvision.models.resnet18().state_dict().items()
              if not k.endswith("num_batches_tracked")}
    weights = seeded_state_dict(shapes, seed)
    ours = {k: torch.from_numpy(weights[torchvision_name(k)]) for k in net.state_dict()
            if not k.endswith("num_batches_tracked")}
    missing, unexpected = net.load_state_dict(ours, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    add_to_path(args.reference_root / "STFPM")
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run
    torch.nn.Module.cuda = lambda self, *a, **k: self
    import main as authors

    seed_everything(0)
    torch.set_num_threads(1)
    teacher, student = authors.ResNet18_MS3(), authors.ResNet18_MS3()
    load_seeded_resnet(teacher, TEACHER_SEED)
    load_seeded_resnet(student, STUDENT_SEED)
    initial = {k: v.clone() for k, v in student.state_dict().items()}

    images = sample_images(0)
    x = imagenet_normalised(images)
    teacher.eval()
    with torch.no_grad():
        t_feats = teacher(x)
    student.train()
    s_feats = student(x)  # the train-mode forward of the step below (running stats restored)
    student.load_state_dict(initial)

    losses, grads = [], {}
    backward = torch.Tensor.backward

    def keep_loss(self: torch.Tensor, *a, **k) -> None:
        losses.append(self.detach().clone())
        backward(self, *a, **k)

    step = torch.optim.SGD.step

    def keep_grads(self: torch.optim.SGD, *a, **k):
        grads.update({torchvision_name(n): p.grad.clone() for n, p in student.named_parameters()
                      if p.grad is not None})
        return step(self, *a, **k)

    torch.Tensor.backward, torch.optim.SGD.step = keep_loss, keep_grads
    batch = torch.utils.data.DataLoader(list(zip(["a", "b"], x, strict=True)), batch_size=2)
    with tempfile.TemporaryDirectory() as folder:
        options = argparse.Namespace(epochs=1, model_save_path=folder, category="parity")
        authors.train_val(teacher, student, batch, batch, options)
    torch.Tensor.backward, torch.optim.SGD.step = backward, step
    assert len(losses) == 1
    stepped = {torchvision_name(k): v.clone() for k, v in student.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    trace = optimizer_trace(lambda p: torch.optim.SGD(p, 0.4, momentum=0.9, weight_decay=1e-4))

    student.load_state_dict(initial)
    maps = authors.test(teacher, student, batch)

    taps = ("layer1", "layer2", "layer3")
    outputs = {f"teacher_{t}": nhwc(f) for t, f in zip(taps, t_feats, strict=True)}
    outputs.update({f"student_{t}": nhwc(f) for t, f in zip(taps, s_feats, strict=True)})
    outputs.update(loss=losses[0].numpy(), maps=maps, image_scores=maps.max(axis=(1, 2)),
                   optimizer_trace=trace.pop("after"))
    save_fixture("stpm", REFERENCE, weights={},
                 inputs={"images": images, "teacher_seed": np.array(TEACHER_SEED),
                         "student_seed": np.array(STUDENT_SEED), **trace},
                 outputs=outputs, grads=rows(grads), stepped=rows(stepped))


if __name__ == "__main__":
    main()
