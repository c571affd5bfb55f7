"""Parity fixture of Uninformed Students against an independent implementation of the paper.

Reference: no public code of the authors exists (MVTec's own implementation is closed), so
this script is the reference: plain PyTorch written from the paper (Bergmann et al., CVPR
2020, Sec. 3 and the supplement's architecture tables), not from anomjax. It builds, per
scale ``p`` in 17, 33, 65, a teacher and ``M`` students with the supplement's layers (conv,
leaky ReLU 5e-3, 2x2 max-pools of stride 2, no activation after the last conv); describes
the patch of side ``p`` centred on every pixel of the reflect-padded image by running that
network on the patch (``unfold``: the definition the paper's fast dense extraction computes);
normalises the teacher's descriptors by their per-channel mean and std over the training
images; trains the students on ``sum_scales sum_students mean_pixels ||mu - y||^2`` with Adam
(lr 1e-4, L2 weight decay 1e-5); and scores a pixel by the regression error
``||mean_i mu_i - y||^2`` and the predictive variance ``mean_i ||mu_i||^2 - ||mean_i mu_i||^2``,
each standardised by its mean and std on the training images, summed, averaged over scales.
Reduced widths (8, descriptors of 16; the paper: 128) and 40 px images.

Run (needs only torch and numpy):

    /tmp/venv-ref/bin/python experiments/parity/uninformed_students.py
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from common import nhwc, save_fixture, seed_everything, state
from distillation_torch import optimizer_trace, rows, sample_images

REFERENCE = "independent PyTorch implementation of the paper's equations (no public code)"
WIDTH, DIM, STUDENTS, SIZE = 8, 16, 2, 40
# The supplement's tables: (kind, kernel, output channels as a multiple of WIDTH; 0 = DIM).
LAYERS = {
    17: [("conv", 6, 1), ("conv", 5, 2), ("conv", 5, 2), ("conv", 4, 0)],
    33: [("conv", 5, 1), ("pool", 2, 0), ("conv", 5, 2), ("pool", 2, 0), ("conv", 2, 2),
         ("conv", 4, 0)],
    65: [("conv", 5, 1), ("pool", 2, 0), ("conv", 5, 1), ("pool", 2, 0), ("conv", 5, 1),
         ("pool", 2, 0), ("conv", 4, 2), ("conv", 1, 0)],
}


def patch_network(p: int) -> torch.nn.Sequential:
    """The patch network of side ``p``: ``[N, 3, p, p] -> [N, DIM, 1, 1]``."""
    layers: OrderedDict[str, torch.nn.Module] = OrderedDict()
    channels = 3
    table = LAYERS[p]
    for i, (kind, k, mult) in enumerate(table):
        if kind == "pool":
            layers[f"pool{i}"] = torch.nn.MaxPool2d(k, k)
            continue
        out = mult * WIDTH if mult else DIM
        layers[f"conv{i}"] = torch.nn.Conv2d(channels, out, k)
        if i < len(table) - 1:
            layers[f"act{i}"] = torch.nn.LeakyReLU(5e-3)
        channels = out
    return torch.nn.Sequential(layers)


def dense(net: torch.nn.Module, p: int, images: torch.Tensor) -> torch.Tensor:
    """The descriptor of the ``p x p`` patch centred on every pixel: ``[B, 3, H, W] ->
    [B, H, W, DIM]`` (reflect padding of ``(p - 1) / 2`` on every side)."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, [(p - 1) // 2] * 4, mode="reflect")
    patches = padded.unfold(2, p, 1).unfold(3, p, 1)  # [B, 3, H, W, p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b * h * w, 3, p, p)
    return net(patches).reshape(b, h, w, DIM)


def standardised(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``values`` minus the mean of ``reference``, over its (population) std."""
    return (values - reference.mean()) / reference.std(unbiased=False)


def main() -> None:
    seed_everything(0)
    torch.set_num_threads(1)
    scales = tuple(LAYERS)
    teachers = torch.nn.ModuleDict({f"p{p}": patch_network(p) for p in scales})
    students = torch.nn.ModuleDict({f"p{p}": torch.nn.ModuleList(
        [patch_network(p) for _ in range(STUDENTS)]) for p in scales})
    initial = {k: v.clone() for k, v in students.state_dict().items()}
    train = torch.from_numpy(sample_images(0, size=SIZE)).permute(0, 3, 1, 2).contiguous()
    test = torch.from_numpy(sample_images(1, size=SIZE)).permute(0, 3, 1, 2).contiguous()

    with torch.no_grad():
        raw = {p: dense(teachers[f"p{p}"], p, train) for p in scales}
    mean = {p: raw[p].mean(dim=(0, 1, 2)) for p in scales}
    std = {p: raw[p].std(dim=(0, 1, 2), unbiased=False) for p in scales}

    def targets(p: int, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (dense(teachers[f"p{p}"], p, images) - mean[p]) / std[p]

    def predictions(p: int, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([dense(s, p, images) for s in students[f"p{p}"]])  # [M, B, H, W, D]

    # One training step of every student.
    optimizer = torch.optim.Adam(students.parameters(), lr=1e-4, weight_decay=1e-5)
    preds = {p: predictions(p, train) for p in scales}
    loss = sum(((preds[p] - targets(p, train)) ** 2).sum(-1).mean(dim=(1, 2, 3)).sum()
               for p in scales)
    optimizer.zero_grad()
    loss.backward()
    grads = {k: v.grad.clone() for k, v in students.named_parameters()}
    optimizer.step()
    stepped = {k: v.clone() for k, v in students.state_dict().items()}
    trace = optimizer_trace(lambda ps: torch.optim.Adam(ps, lr=1e-4, weight_decay=1e-5))

    # Scores of the initial students: error and variance standardised on the training images.
    students.load_state_dict(initial)

    def error_variance(p: int, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mu = predictions(p, images)
            y = targets(p, images)
        average = mu.mean(0)
        error = ((average - y) ** 2).sum(-1)
        variance = (mu ** 2).sum(-1).mean(0) - (average ** 2).sum(-1)
        return error, variance

    maps = 0
    outputs = {}
    for p in scales:
        e_train, v_train = error_variance(p, train)
        e_test, v_test = error_variance(p, test)
        maps = maps + standardised(e_test, e_train) + standardised(v_test, v_train)
        outputs[f"teacher_p{p}"] = raw[p].numpy()
        outputs[f"teacher_mean_p{p}"] = mean[p].numpy()
        outputs[f"teacher_std_p{p}"] = std[p].numpy()
        outputs[f"student_mean_p{p}"] = preds[p].detach().mean(0).numpy()
        outputs[f"calibration_p{p}"] = np.array([e_train.mean(), e_train.std(unbiased=False),
                                                 v_train.mean(), v_train.std(unbiased=False)])
    maps = (maps / len(scales)).numpy()
    outputs.update(loss=loss.detach().numpy(), maps=maps, image_scores=maps.max(axis=(1, 2)),
                   optimizer_trace=trace.pop("after"))
    save_fixture("uninformed_students", REFERENCE,
                 weights={**{f"teacher.{k}": v for k, v in state(teachers).items()},
                          **{f"students.{k}": v for k, v in initial.items()}},
                 inputs={"train": nhwc(train), "test": nhwc(test), **trace},
                 outputs=outputs, grads=rows(grads), stepped=rows(stepped))


if __name__ == "__main__":
    main()
