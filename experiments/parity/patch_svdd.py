"""Patch SVDD parity fixture: the authors' code,
nuclearboy95/Anomaly-Detection-PatchSVDD-PyTorch@934d6238e5e0ad511e2a0e7fc4f4899010e7d892.

Reference files: ``codes/networks.py`` (``EncoderHier(64)`` around ``EncoderDeep(32)``,
``forward_hier``'s quadrant split, ``PositionClassifier`` with ``NormalizedLinear``),
``codes/datasets.py`` (``PositionDataset``, ``SVDD_Dataset``: the pair draws, RGB shift and
noise; ``SVDD_Dataset.infer``, ``PositionClassifier.infer``), ``main_train.py`` (the loss
``pos_64 + pos_32 + lambda (svdd_64 + svdd_32)`` and ``Adam(lr=1e-4)``; that one line of the
training loop is restated here, the script cannot be imported), ``codes/inspection.py``
(``infer``: embeddings of every patch at strides 16 and 4, then ``search_NN`` with the KD
tree, ``distribute_scores`` and the product of the two scales, as
``eval_embeddings_NN_multiK``), ``codes/mvtecad.py`` (``get_mean``: the per-pixel mean image;
``get_x_standardized``: ``(x - mean) / 255``).

The networks are the code's classes with their layers replaced by the same layer types at
reduced widths (``EncoderDeep`` 8 channels throughout, ``D`` 8, ``EncoderHier``'s 2x2
convolution 16 wide; the classifiers keep their 128) so that weights, gradients and stepped
parameters fit the fixture; ``patch_svdd_tree.json`` holds the full-width ``EncoderHier(64,
64)`` and the two classifiers. One batch of 4 pairs per task and scale is drawn by the code's
datasets from two 256 px images (their coordinates assume 256 px) and collated by
``DictionaryConcatDataset`` and a ``DataLoader`` as in ``main_train.py``. ``inspection.infer``
moves batches with ``.cuda()``: ``torch.Tensor.cuda`` is stubbed to stay on the CPU.

Run: ``/tmp/venv-ref/bin/python experiments/parity/patch_svdd.py --reference-root /tmp/refs``
with the repository extracted to ``/tmp/refs/patchsvdd``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import gradients, save_fixture, save_parameter_tree, seed_everything, state

REFERENCE = ("nuclearboy95/Anomaly-Detection-PatchSVDD-PyTorch@"
             "934d6238e5e0ad511e2a0e7fc4f4899010e7d892 codes/networks.py, codes/datasets.py, "
             "main_train.py, codes/inspection.py")
D, WIDTH, HEAD = 8, 8, 16
LEARNING_RATE, LAMBDA = 1e-4, 1.0


def reduced(networks) -> torch.nn.ModuleDict:
    enc = networks.EncoderHier(64, D)
    deep = enc.enc
    c_in = 3
    for i in range(1, 9):
        out = D if i == 8 else WIDTH
        setattr(deep, f"conv{i}", torch.nn.Conv2d(c_in, out, 3, 2 if i == 1 else 1, 0))
        c_in = out
    enc.conv1 = torch.nn.Conv2d(D, HEAD, 2, 1, 0)
    enc.conv2 = torch.nn.Conv2d(HEAD, D, 1, 1, 0)
    return torch.nn.ModuleDict({"enc": enc, "cls_64": networks.PositionClassifier(64, D),
                                "cls_32": networks.PositionClassifier(32, D)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference_root / "patchsvdd"))
    torch.Tensor.cuda = lambda self, *a, **k: self  # inspection.infer's .cuda(): stay on CPU
    from codes import networks
    from codes.datasets import PositionDataset, SVDD_Dataset
    from codes.inspection import infer
    from codes.nearest_neighbor import search_NN
    from codes.utils import DictionaryConcatDataset, distribute_scores
    from torch.utils.data import DataLoader

    seed_everything(0)
    model = reduced(networks)
    for m in model["enc"].modules():  # He-scaled weights: embeddings that vary between patches
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, a=0.1)
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    weights = {k: v.copy() for k, v in state(model).items()}

    # Training pairs from two standardised 256 px images, as main_train.py draws them.
    raw = np.random.randint(0, 256, (2, 256, 256, 3)).astype(np.float32)  # noqa: NPY002
    train_x = ((raw - raw.mean(axis=0)) / 255).transpose(0, 3, 1, 2).copy()
    datasets = {f"{task}_{k}": cls(train_x, K=k, repeat=2)
                for task, cls in (("pos", PositionDataset), ("svdd", SVDD_Dataset))
                for k in (64, 32)}  # 4 pairs per task and scale: each image twice
    batch = next(iter(DataLoader(DictionaryConcatDataset(datasets), batch_size=4,
                                 shuffle=False)))

    enc, cls_64, cls_32 = model["enc"], model["cls_64"], model["cls_32"]
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    opt.zero_grad()
    losses = {"pos_64": networks.PositionClassifier.infer(cls_64, enc, batch["pos_64"]),
              "pos_32": networks.PositionClassifier.infer(cls_32, enc.enc, batch["pos_32"]),
              "svdd_64": SVDD_Dataset.infer(enc, batch["svdd_64"]),
              "svdd_32": SVDD_Dataset.infer(enc.enc, batch["svdd_32"])}
    loss = losses["pos_64"] + losses["pos_32"] + LAMBDA * (losses["svdd_64"] + losses["svdd_32"])
    loss.backward()
    grads = {k: v.copy() for k, v in gradients(model.named_parameters()).items()}
    embeddings = {"emb_64": enc(batch["pos_64"][0]).detach()[:, :, 0, 0].numpy(),
                  "emb_32": enc.enc(batch["pos_32"][0]).detach()[:, :, 0, 0].numpy()}
    opt.step()
    stepped = {k: v.copy() for k, v in state(model).items()}

    # Maps of a fixed state (the initial weights) on 96 px images: 3x3 and 17x17 patch grids.
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    images = np.random.randint(0, 256, (4, 96, 96, 3)).astype(np.float32)  # noqa: NPY002
    mean = images[:2].mean(axis=0)
    standard = (images - mean) / 255
    maps = {}
    for k, stride, net in ((64, 16, enc), (32, 4, enc.enc)):
        net.D = D
        train_emb = infer(standard[:2], net, k, stride)
        test_emb = infer(standard[2:], net, k, stride)
        dist, _ = search_NN(test_emb, train_emb.reshape(-1, D), method="kdt")
        maps[k] = distribute_scores(dist[..., 0], (96, 96), K=k, S=stride)
    product = maps[64] * maps[32]

    inputs = {"images": images / 255}
    for name, pair in batch.items():
        for i, tensor in enumerate(pair):
            array = tensor.numpy()
            inputs[f"{name}/{i}"] = (array.transpose(0, 2, 3, 1) if array.ndim == 4
                                     else array.astype(np.int32))
    save_fixture("patch_svdd", REFERENCE, weights=weights, inputs=inputs,
                 outputs={"loss": loss.detach().numpy(), **embeddings,
                          **{k: v.detach().numpy() for k, v in losses.items()},
                          "map_64": maps[64], "map_32": maps[32], "maps": product,
                          "scores": product.max(axis=(1, 2))},
                 grads=grads, stepped=stepped)
    save_parameter_tree("patch_svdd", REFERENCE, torch.nn.ModuleDict({
        "enc": networks.EncoderHier(64, 64), "cls_64": networks.PositionClassifier(64, 64),
        "cls_32": networks.PositionClassifier(32, 64)}))


if __name__ == "__main__":
    main()
