"""DifferNet parity fixture from the authors' code.

Reference: marco-rudolph/differnet@9bdf02686297a093fb206ffeba64b1c0e78182b6, ``model.py``
(``DifferNet``: pooled features at three image scales, ``nf_head``: ``permute_layer`` +
``glow_coupling_layer`` with ``F_fully_connected`` from ``freia_funcs.py``), ``utils.py``
(``get_loss``, ``get_random_transforms``: ``RandomRotation(180)``),
``multi_transform_loader.py`` (``fixed_rotation``: the test copies at ``360 i / T`` degrees),
``train.py`` (Adam lr 2e-4, betas (0.8, 0.8), eps 1e-4, weight decay 1e-5; the image score
``mean z^2`` over an image's copies) and ``localization.py`` (``export_gradient_maps``: the
gradient map, run unchanged; its ``save_imgs`` is replaced to capture the map).

What differs from the authors' set-up, and why:

* ``config`` is a module built here (the authors' one calls ``torch.cuda.set_device``):
  their values except reduced sizes (32 px images, 2 coupling blocks, hidden width 32,
  4 copies per image in training and test) and an identity ``Normalize`` (mean 0, std 1)
  in the input transforms, with the ImageNet normalisation moved into the feature extractor
  instead. The network computes the same features; the gradient map is then the gradient
  with respect to the ``[0, 1]`` image, which is anomjax's convention (the authors': the
  normalised image, whose channels differ from it by 1 / std = 1 / 0.229, 1 / 0.224,
  1 / 0.225).
* The feature extractor (AlexNet ``features`` in the paper, ImageNet weights) is a random
  torchvision ResNet-18 cut after ``layer1`` (``model.alexnet`` is replaced by a function
  returning it), which anomjax also has (``resnet18``, tap ``layer1``); its BatchNorm
  statistics are random too, and it runs in eval mode (frozen).
* ``F_fully_connected`` holds a ``BatchNorm1d`` that its ``forward`` never uses: its
  tensors are left out of the fixture's weights (the parameter tree lists them).

Run (after ``git --git-dir=<fetched differnet> archive HEAD | tar -x -C /tmp/refs/differnet``)::

    /tmp/venv-ref/bin/python experiments/parity/differnet.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything, state

REFERENCE = ("marco-rudolph/differnet@9bdf02686297a093fb206ffeba64b1c0e78182b6 model.py, "
             "freia_funcs.py, utils.py, multi_transform_loader.py, train.py, localization.py")
SIZE, BLOCKS, HIDDEN, COPIES, BATCH = 32, 2, 32, 4, 2
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def config(n_feat: int, blocks: int, hidden: int) -> types.ModuleType:
    """The authors' ``config`` with reduced sizes and identity input normalisation."""
    c = types.ModuleType("config")
    c.device, c.dataset_path, c.class_name, c.modelname = "cpu", "", "", "parity"
    c.img_size, c.img_dims = (SIZE, SIZE), [3, SIZE, SIZE]
    c.transf_rotations, c.transf_brightness, c.transf_contrast, c.transf_saturation = (
        True, 0.0, 0.0, 0.0)
    c.norm_mean, c.norm_std = [0.0] * 3, [1.0] * 3
    c.n_scales, c.clamp_alpha, c.n_coupling_blocks, c.fc_internal = 3, 3, blocks, hidden
    c.dropout, c.lr_init, c.n_feat = 0.0, 2e-4, n_feat
    c.n_transforms, c.n_transforms_test, c.batch_size, c.batch_size_test = (
        COPIES, COPIES, BATCH, BATCH)
    c.meta_epochs, c.sub_epochs, c.verbose, c.grad_map_viz = 1, 1, False, False
    c.hide_tqdm_bar, c.save_model = True, False
    return c


def import_reference(root: Path, c: types.ModuleType) -> types.SimpleNamespace:
    for name in ("config", "model", "utils", "freia_funcs", "localization",
                 "multi_transform_loader"):
        sys.modules.pop(name, None)
    sys.modules["config"] = c
    if str(root / "differnet") not in sys.path:
        sys.path.insert(0, str(root / "differnet"))
    import localization  # noqa: PLC0415 (the authors' modules, importable after the stub)
    import model  # noqa: PLC0415
    import multi_transform_loader  # noqa: PLC0415
    import utils  # noqa: PLC0415
    return types.SimpleNamespace(model=model, utils=utils, localization=localization,
                                 loader=multi_transform_loader)


class Normalize(torch.nn.Module):
    """ImageNet normalisation inside the network (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
        return (x - mean) / std


def resnet_layer1() -> tuple[torch.nn.Module, torchvision.models.ResNet]:
    """A random ResNet-18 with random BatchNorm statistics, cut after ``layer1``."""
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    holder = torch.nn.Module()
    holder.features = torch.nn.Sequential(Normalize(), net.conv1, net.bn1, net.relu, net.maxpool,
                                          net.layer1)
    return holder, net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")

    ref = import_reference(args.reference_root, config(256 * 3, 8, 2048))
    with torch.device("meta"):  # shapes only: the full-width flow has ~170M parameters
        full = ref.model.nf_head()
    save_parameter_tree("differnet", REFERENCE + " (AlexNet features: 768 dims; 8 blocks, "
                        "hidden 2048)", full)

    ref = import_reference(args.reference_root, config(64 * 3, BLOCKS, HIDDEN))
    seed_everything(0)
    extractor, resnet = resnet_layer1()
    ref.model.alexnet = lambda pretrained: extractor
    net = ref.model.DifferNet()
    net.feature_extractor.eval()
    for p in net.feature_extractor.parameters():
        p.requires_grad = False
    weights = {f"nf.{k}": v.copy() for k, v in state(net.nf).items() if ".bn." not in k}
    weights |= {f"backbone.{k}": v.copy() for k, v in state(resnet).items()
                if k.startswith(("conv1.", "bn1.", "layer1."))}
    optimizer = torch.optim.Adam(net.nf.parameters(), lr=2e-4, betas=(0.8, 0.8), eps=1e-4,
                                 weight_decay=1e-5)

    pixels = np.random.default_rng(0).integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    pil = [Image.fromarray(p) for p in pixels]

    # the fixed state's image score and gradient map (test copies at 0, 90, 180, 270 degrees)
    test_set = types.SimpleNamespace(fixed_degrees=[i * 360.0 / COPIES for i in range(COPIES)])
    test = torch.stack([torch.stack([ref.loader.fixed_rotation(test_set, im, d)
                                     for d in test_set.fixed_degrees]) for im in pil])
    with torch.no_grad():
        z = net(test.view(-1, 3, SIZE, SIZE))
    image_score = torch.mean(z.view(-1, COPIES, z.shape[-1]) ** 2, dim=(-2, -1))
    maps: list[np.ndarray] = []
    ref.localization.save_imgs = lambda _inputs, grad, cnt: maps.append(grad) or cnt
    loader = _Loader([(test, torch.ones(BATCH, dtype=torch.long))])  # labels > 0: all mapped
    ref.localization.export_gradient_maps(net, loader, optimizer)

    # one training step on the authors' random rotations
    transform = ref.utils.get_random_transforms()
    copies = torch.stack([transform(im) for im in pil for _ in range(COPIES)])
    optimizer.zero_grad()
    blocks: list[torch.Tensor] = []
    for module in net.nf.module_list:
        if type(module).__name__ == "glow_coupling_layer":
            module.register_forward_hook(lambda _m, _i, out: blocks.append(out[0].detach()))
    embedding: list[torch.Tensor] = []
    net.nf.register_forward_pre_hook(lambda _m, args: embedding.append(args[0].detach()))
    z = net(copies)
    jac = net.nf.jacobian(run_forward=False)
    loss = ref.utils.get_loss(z, jac)
    loss.backward()
    grads = {f"nf.{k}": v.copy() for k, v in gradients(net.nf.named_parameters()).items()}
    optimizer.step()
    stepped = {f"nf.{k}": v for k, v in state(net.nf).items() if ".bn." not in k}

    outputs = {"test_copies": nhwc(test.view(-1, 3, SIZE, SIZE)), "image_score": image_score,
               "map": maps[0], "embedding": embedding[0], "log_det": jac.detach(),
               "loss": loss.detach(), "latent": z.detach()}
    outputs |= {f"block{k}": y for k, y in enumerate(blocks)}
    save_fixture("differnet", REFERENCE, weights=weights,
                 inputs={"images": pixels.astype(np.float32) / 255.0,
                         "train_copies": nhwc(copies)},
                 outputs=outputs, grads=grads, stepped=stepped)


class _Loader(list):
    """The test loader ``export_gradient_maps`` iterates: batches and ``dataset.get_fixed``."""

    dataset = types.SimpleNamespace(get_fixed=True)


if __name__ == "__main__":
    main()
