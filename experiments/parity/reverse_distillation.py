"""Parity fixture of Reverse Distillation against the authors' code.

Reference: ``hq-deng/RD4AD@6554076872c65f8784f6ece8cfb39ce77e1aee12``: ``resnet.py``
(``resnet18`` encoder and ``BN_layer(AttnBasicBlock, 2)``, the OCBE), ``de_resnet.py``
(``de_resnet18``), ``main.py::loss_fucntion`` (flattened cosine), ``main.py::train``
(Adam lr 0.005, betas (0.5, 0.999), OCBE and decoder in train mode, encoder in eval mode) and
``test.py::cal_anomaly_map(..., amap_mode='a')`` + ``gaussian_filter(sigma=4)`` + max
(``test.py::evaluation``). The paper's ResNet-18 variant, at full width, on 64 px inputs.

Weights: every tensor is seeded (``distillation_torch.load_seeded``; teacher seed 0, OCBE +
decoder seed 1), so the fixture stores no weights; gradients and the parameters after one
Adam step are the first rows of every tensor. Adam's first step does not depend on the betas,
so the optimiser is also traced over three steps of fixed gradients
(``distillation_torch.optimizer_trace``). ``BN_layer`` also builds ``conv4``/``bn4``, which
its forward never uses (no gradient): the test checks they are the only tensors left out of
the mapping.

Run (the reference is read-only under /tmp/refs, never copied here):

    git --git-dir=<fetch github:hq-deng/RD4AD> archive HEAD | tar -x -C /tmp/refs/RD4AD
    /tmp/venv-ref/bin/python experiments/parity/reverse_distillation.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything
from distillation_torch import (
    add_to_path,
    imagenet_normalised,
    load_seeded,
    optimizer_trace,
    rows,
    sample_images,
)

REFERENCE = ("hq-deng/RD4AD@6554076872c65f8784f6ece8cfb39ce77e1aee12 resnet.py, de_resnet.py, "
             "main.py::loss_fucntion/train, test.py::cal_anomaly_map/evaluation")
TEACHER_SEED, STUDENT_SEED = 0, 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    add_to_path(args.reference_root / "RD4AD")
    from de_resnet import de_resnet18
    from main import loss_fucntion
    from resnet import resnet18
    from scipy.ndimage import gaussian_filter
    from test import cal_anomaly_map

    seed_everything(0)
    torch.set_num_threads(1)
    encoder, bn = resnet18(pretrained=False)
    decoder = de_resnet18(pretrained=False)
    load_seeded(encoder, TEACHER_SEED)
    student = torch.nn.ModuleDict({"bn": bn, "decoder": decoder})
    load_seeded(student, STUDENT_SEED)
    save_parameter_tree("reverse_distillation", REFERENCE, student)
    initial = {k: v.clone() for k, v in student.state_dict().items()}

    images = sample_images(0)
    x = imagenet_normalised(images)
    encoder.eval()
    with torch.no_grad():
        teacher = encoder(x)

    # One training step, as main.py::train.
    params = list(decoder.parameters()) + list(bn.parameters())
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))
    bn.train()
    decoder.train()
    recon = decoder(bn(teacher))
    loss = loss_fucntion(teacher, recon)
    optimizer.zero_grad()
    loss.backward()
    grads = gradients(student.named_parameters())
    optimizer.step()
    stepped = {k: v.clone() for k, v in student.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    trace = optimizer_trace(lambda p: torch.optim.Adam(p, lr=0.005, betas=(0.5, 0.999)))

    # The map of the initial (seeded) state, as test.py::evaluation.
    student.load_state_dict(initial)
    bn.eval()
    decoder.eval()
    maps = []
    with torch.no_grad():
        for i in range(len(images)):
            feats = [t[i:i + 1] for t in teacher]
            amap, _ = cal_anomaly_map(feats, decoder(bn(feats)), images.shape[1], amap_mode="a")
            maps.append(gaussian_filter(amap, sigma=4))
    maps = np.stack(maps)

    outputs = {f"teacher_layer{i + 1}": nhwc(t) for i, t in enumerate(teacher)}
    outputs.update({f"decoder_{i}": nhwc(r) for i, r in enumerate(recon)})
    outputs.update(loss=loss.detach().numpy(), maps=maps, image_scores=maps.max(axis=(1, 2)),
                   optimizer_trace=trace.pop("after"))
    save_fixture("reverse_distillation", REFERENCE, weights={},
                 inputs={"images": images, "teacher_seed": np.array(TEACHER_SEED),
                         "student_seed": np.array(STUDENT_SEED), **trace},
                 outputs=outputs, grads=rows(grads), stepped=rows(stepped))


if __name__ == "__main__":
    main()
