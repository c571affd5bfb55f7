"""SSPCAB parity fixture: the authors' block alone, and DRAEM + SSPCAB's loss and Adam step.

Reference: ``ristea/sspcab@07d416cd97d6534c3bc81d53939154b6ff8bd958`` ``sspcab_torch.py``
(``SSPCAB``: the masked convolution, ReLU and squeeze-and-excitation; its self-supervised loss
``MSELoss(input, output)`` as the file's closing comment shows). The authors publish only the
block; DRAEM + SSPCAB is composed here from the two official pieces as the SSPCAB paper and
anomalib's ``DraemModel(sspcab=True)`` place it: ``VitjanZ/DRAEM@2dbf673`` ``model_unet.py``'s
``ReconstructiveSubNetwork`` with ``encoder.block5`` replaced by ``SSPCAB(8 * width)``, the loss
``L2 + SSIM + focal + 0.1 * MSE(block5 input, block5 output)``, Adam at 1e-4 (``loss.py``,
``train_DRAEM.py``; see ``draem.py`` for the stubbed ``.cuda()``).

Fixture: the block (``k = 1, d = 1`` and ``k = 2, d = 2``, 16 channels, ``r = 8``) on
``[2, 16, 9, 9]`` inputs: its output, loss and gradients; DRAEM + SSPCAB at widths 4 / 4 on
the same anomaly batch as ``draem.py`` (float64, weights with float32 values): the loss
terms, the gradients, the parameters after one Adam step. ``draem_sspcab_tree.json``: the
full-width DRAEM + SSPCAB parameter tree.

    python experiments/parity/sspcab.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything, state  # noqa: E402
from draem import (  # noqa: E402
    REC_WIDTH,
    SEG_WIDTH,
    anomaly_batch,
    float32_gradient_error,
    load,
    load_train_helpers,
    named_gradients,
    randomise_running_stats,
    training_loss,
)

REPOSITORY = "ristea/sspcab@07d416cd97d6534c3bc81d53939154b6ff8bd958"
REFERENCE = (f"{REPOSITORY} sspcab_torch.py; DRAEM + SSPCAB: VitjanZ/DRAEM@2dbf673 "
             "model_unet.py with encoder.block5 = SSPCAB")
CHANNELS = 16
SSPCAB_WEIGHT = 0.1


def block_outputs(sspcab: type, k: int, d: int, x: torch.Tensor, name: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weights, outputs and gradients of one block ``SSPCAB(CHANNELS, k, d)`` on ``x``."""
    block = sspcab.SSPCAB(CHANNELS, kernel_dim=k, dilation=d)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(p.float())
    weights = {f"{name}.{key}": v for key, v in state(block).items()}
    out = block(x)
    loss = torch.nn.MSELoss()(x, out)
    loss.backward()
    grads = {f"{name}.{key}": v for key, v in gradients(block.named_parameters()).items()}
    return weights, {f"{name}_out": nhwc(out), f"{name}_loss": loss}, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    sspcab = load(args.reference_root / "ristea+sspcab", "sspcab_torch")
    root = args.reference_root / "VitjanZ+DRAEM"
    torch.Tensor.cuda = lambda self, *a, **k: self  # loss.SSIM.__init__ moves its window to CUDA
    model_unet, loss, perlin = load(root, "model_unet"), load(root, "loss"), load(root, "perlin")
    train = load_train_helpers(root)

    seed_everything(1)
    torch.set_default_dtype(torch.float64)
    x = torch.tensor(np.random.default_rng(1).normal(size=(2, CHANNELS, 9, 9)).astype(np.float32),
                     dtype=torch.float64, requires_grad=True)
    weights, outputs, grads = {}, {}, {}
    for name, k, d in (("block_k1_d1", 1, 1), ("block_k2_d2", 2, 2)):
        w, o, g = block_outputs(sspcab, k, d, x, name)
        weights.update(w)
        outputs.update(o)
        grads.update(g)

    rec = model_unet.ReconstructiveSubNetwork(in_channels=3, out_channels=3, base_width=REC_WIDTH)
    seg = model_unet.DiscriminativeSubNetwork(in_channels=6, out_channels=2,
                                              base_channels=SEG_WIDTH)
    rec.apply(train.weights_init)
    seg.apply(train.weights_init)
    rec.encoder.block5 = sspcab.SSPCAB(REC_WIDTH * 8)
    randomise_running_stats(rec, seg)
    with torch.no_grad():  # see draem.py: SSIM's value range stays 1; float32 values
        rec.decoder.fin_out[0].weight.mul_(0.25)
        rec.decoder.fin_out[0].bias.mul_(0.25)
        for tensor in [*rec.state_dict().values(), *seg.state_dict().values()]:
            tensor.copy_(tensor.float())
    weights.update({f"rec.{k}": v for k, v in state(rec).items()})
    weights.update({f"seg.{k}": v for k, v in state(seg).items()})

    draws = anomaly_batch(perlin)
    target = torch.tensor(draws["target"], dtype=torch.float64).permute(0, 3, 1, 2)
    augmented = torch.tensor(draws["augmented"], dtype=torch.float64).permute(0, 3, 1, 2)
    mask = torch.tensor(draws["mask"])[:, None]
    optimizer = torch.optim.Adam([{"params": rec.parameters(), "lr": 1e-4},
                                  {"params": seg.parameters(), "lr": 1e-4}])
    before = copy.deepcopy((rec, seg))
    terms, _, _ = training_loss(loss, rec, seg, target, augmented, mask, SSPCAB_WEIGHT)
    optimizer.zero_grad()
    terms["loss"].backward()
    reference_grads = named_gradients(rec, seg)
    grads.update(reference_grads)
    terms["float32_gradient_error"] = float32_gradient_error(
        loss, *before, target, augmented, mask, reference_grads, SSPCAB_WEIGHT)
    optimizer.step()
    stepped = {**{f"rec.{k}": v for k, v in state(rec).items()},
               **{f"seg.{k}": v for k, v in state(seg).items()}}
    save_fixture("sspcab", REFERENCE, weights=weights,
                 inputs={"block_input": nhwc(x), **draws},
                 outputs={**outputs, **terms}, grads=grads, stepped=stepped)

    full = model_unet.ReconstructiveSubNetwork(in_channels=3, out_channels=3)
    full.encoder.block5 = sspcab.SSPCAB(128 * 8)
    save_parameter_tree("draem_sspcab", REFERENCE, torch.nn.ModuleDict({
        "rec": full, "seg": model_unet.DiscriminativeSubNetwork(in_channels=6, out_channels=2)}))


if __name__ == "__main__":
    main()
