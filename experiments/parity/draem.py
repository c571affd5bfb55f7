"""DRAEM parity fixture: the authors' networks, loss, one Adam step and test-time score.

Reference: ``VitjanZ/DRAEM@2dbf67397ab5c10a1494e5ae70ab59a25d7c35ef`` — ``model_unet.py``
(``ReconstructiveSubNetwork``, ``DiscriminativeSubNetwork``), ``loss.py`` (``FocalLoss``,
``SSIM``), ``train_DRAEM.py`` (``weights_init``, the loss ``L2 + SSIM + focal`` on the softmax,
Adam at ``lr=1e-4`` over both networks), ``test_DRAEM.py`` (map = softmax channel 1, image
score = max of ``avg_pool2d(21, stride=1, padding=10)``), ``perlin.py`` (``rand_perlin_2d_np``
for the anomaly masks). ``loss.SSIM.__init__`` calls ``.cuda()``: the script makes
``Tensor.cuda`` the identity so that it runs on the CPU (nothing else is stubbed).

Reduced widths (reconstructive 4, discriminative 4 instead of 128 / 64) on a ``[4, 3, 64, 64]``
batch, computed in float64 (BatchNorm over small batches amplifies rounding: the reference's
own float32 training-mode forward differs from its float64 one by 2e-4 to 6e-4 here); the
full-width architecture is written as a parameter tree (``draem_tree.json``).
Every random draw of a training sample is an input of the fixture: the target images, the
Perlin masks (thresholded at 0.5, drawn with the authors' generator and scales ``2^[0, 6)``),
the opacities ``beta`` and the anomaly sources (uniform noise), blended as ``data_loader.py`` does
(sample 3 stays normal, as half of the authors' samples do). ``loss.ssim`` takes its value
range from the reconstruction (2 when it dips below -0.5); the last convolution of the
reconstructive network is scaled by 0.25 so that this batch stays in the range-1 regime
that anomjax implements (a recorded deviation).

    python experiments/parity/draem.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything, state  # noqa: E402

REPOSITORY = "VitjanZ/DRAEM@2dbf67397ab5c10a1494e5ae70ab59a25d7c35ef"
REFERENCE = f"{REPOSITORY} model_unet.py, loss.py, train_DRAEM.py, test_DRAEM.py"
BATCH, SIZE, REC_WIDTH, SEG_WIDTH = 4, 64, 4, 4


def load(root: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"draem_{name}", root / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomise_running_stats(*modules: torch.nn.Module) -> None:
    """Non-trivial BatchNorm running statistics, so that the eval-mode maps depend on them."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def anomaly_batch(perlin: ModuleType) -> dict[str, np.ndarray]:
    """Targets ``[B, H, W, 3]``, Perlin masks ``[B, H, W]``, opacities ``[B]`` and the
    augmented images ``[B, H, W, 3]``: uniform-noise sources blended as the authors'
    ``augment_image`` does."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    targets = np.stack([0.5 + 0.3 * np.sin(6 * xx + k) * np.cos(4 * yy - k) for k in range(3)],
                       -1)[None] + 0.1 * rng.random((BATCH, SIZE, SIZE, 3))
    sources = rng.random((BATCH, SIZE, SIZE, 3))
    masks = np.zeros((BATCH, SIZE, SIZE, 1))
    betas = np.zeros(BATCH)
    for i in range(BATCH - 1):  # the last sample stays normal
        scale_x = 2 ** int(torch.randint(0, 6, (1,)))
        scale_y = 2 ** int(torch.randint(0, 6, (1,)))
        noise = perlin.rand_perlin_2d_np((SIZE, SIZE), (scale_x, scale_y))
        masks[i] = (noise > 0.5)[..., None]
        betas[i] = torch.rand(1).item() * 0.8
    beta = betas[:, None, None, None]
    augmented = (targets * (1 - masks) + (1 - beta) * sources * masks
                 + beta * targets * masks)
    targets, augmented = targets.astype(np.float32), augmented.astype(np.float32)
    return {"target": targets, "augmented": augmented, "mask": masks[..., 0], "beta": betas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    root = args.reference_root / "VitjanZ+DRAEM"
    torch.Tensor.cuda = lambda self, *a, **k: self  # loss.SSIM.__init__ moves its window to CUDA
    model_unet, loss, perlin = load(root, "model_unet"), load(root, "loss"), load(root, "perlin")
    train = load_train_helpers(root)

    seed_everything(0)
    torch.set_default_dtype(torch.float64)  # the reference's exact values (stored as float32)
    rec = model_unet.ReconstructiveSubNetwork(in_channels=3, out_channels=3, base_width=REC_WIDTH)
    seg = model_unet.DiscriminativeSubNetwork(in_channels=6, out_channels=2,
                                              base_channels=SEG_WIDTH)
    rec.apply(train.weights_init)
    seg.apply(train.weights_init)
    randomise_running_stats(rec, seg)
    with torch.no_grad():  # keeps the reconstruction in [-0.5, 128]: SSIM's range stays 1
        rec.decoder.fin_out[0].weight.mul_(0.25)
        rec.decoder.fin_out[0].bias.mul_(0.25)
    with torch.no_grad():  # weights with float32 values (the fixture's), used in float64
        for tensor in [*rec.state_dict().values(), *seg.state_dict().values()]:
            tensor.copy_(tensor.float())
    weights = {**{f"rec.{k}": v for k, v in state(rec).items()},
               **{f"seg.{k}": v for k, v in state(seg).items()}}

    draws = anomaly_batch(perlin)
    target = torch.tensor(draws["target"], dtype=torch.float64).permute(0, 3, 1, 2)
    augmented = torch.tensor(draws["augmented"], dtype=torch.float64).permute(0, 3, 1, 2)
    mask = torch.tensor(draws["mask"])[:, None]

    # Test-time map and score of the fixed state (eval mode, running statistics) on the
    # targets.
    rec.eval()
    seg.eval()
    with torch.no_grad():
        rec_eval = rec(target)
        probs = torch.softmax(seg(torch.cat((rec_eval, target), dim=1)), dim=1)[:, 1:]
        score = F.avg_pool2d(probs, 21, stride=1, padding=21 // 2).amax(dim=(1, 2, 3))
        # The same pooling at the window scaled to this image (21 * 64 / 256 -> 5).
        score_scaled = F.avg_pool2d(probs, 5, stride=1, padding=2).amax(dim=(1, 2, 3))

    # One training step, as train_DRAEM.py's loop body.
    rec.train()
    seg.train()
    optimizer = torch.optim.Adam([{"params": rec.parameters(), "lr": 1e-4},
                                  {"params": seg.parameters(), "lr": 1e-4}])
    before = copy.deepcopy((rec, seg))
    terms, gray_rec, out_mask = training_loss(loss, rec, seg, target, augmented, mask)
    optimizer.zero_grad()
    terms["loss"].backward()
    grads = named_gradients(rec, seg)
    terms["float32_gradient_error"] = float32_gradient_error(loss, *before, target, augmented,
                                                             mask, grads)
    optimizer.step()
    stepped = {**{f"rec.{k}": v for k, v in state(rec).items()},
               **{f"seg.{k}": v for k, v in state(seg).items()}}

    save_fixture("draem", REFERENCE, weights=weights,
                 inputs=draws,
                 outputs={"rec_train": nhwc(gray_rec), "seg_train": nhwc(out_mask),
                          **terms,
                          "rec_eval": nhwc(rec_eval), "map": probs[:, 0],
                          "score": score, "score_scaled": score_scaled},
                 grads=grads, stepped=stepped)
    full_rec = model_unet.ReconstructiveSubNetwork(in_channels=3, out_channels=3)
    full_seg = model_unet.DiscriminativeSubNetwork(in_channels=6, out_channels=2)
    save_parameter_tree("draem", REFERENCE, torch.nn.ModuleDict({"rec": full_rec,
                                                                  "seg": full_seg}))


def training_loss(loss: ModuleType, rec: torch.nn.Module, seg: torch.nn.Module,
                  target: torch.Tensor, augmented: torch.Tensor, mask: torch.Tensor,
                  sspcab_weight: float = 0.0
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``train_DRAEM.py``'s loss terms (``l2``, ``ssim``, ``focal``, ``loss``; with
    ``sspcab_weight``, ``sspcab`` = MSE of ``encoder.block5``'s input and output joins), the
    reconstruction and the discriminative logits."""
    block = {}
    hook = rec.encoder.block5.register_forward_hook(
        lambda module, inputs, output: block.update(input=inputs[0], output=output))
    gray_rec = rec(augmented)
    hook.remove()
    assert gray_rec.min() >= -0.5 and gray_rec.max() <= 128, "SSIM's value range must be 1"
    out_mask = seg(torch.cat((gray_rec, augmented), dim=1))
    terms = {"l2": torch.nn.modules.loss.MSELoss()(gray_rec, target),
             "ssim": loss.SSIM()(gray_rec, target),
             "focal": loss.FocalLoss()(torch.softmax(out_mask, dim=1), mask)}
    total = terms["l2"] + terms["ssim"] + terms["focal"]
    if sspcab_weight:
        terms["sspcab"] = torch.nn.MSELoss()(block["input"], block["output"])
        total = total + sspcab_weight * terms["sspcab"]
    return {**terms, "loss": total}, gray_rec, out_mask


def named_gradients(rec: torch.nn.Module, seg: torch.nn.Module) -> dict[str, np.ndarray]:
    return {**{f"rec.{k}": v for k, v in gradients(rec.named_parameters()).items()},
            **{f"seg.{k}": v for k, v in gradients(seg.named_parameters()).items()}}


def float32_gradient_error(loss: ModuleType, rec: torch.nn.Module, seg: torch.nn.Module,
                           target: torch.Tensor, augmented: torch.Tensor, mask: torch.Tensor,
                           grads: dict[str, np.ndarray], sspcab_weight: float = 0.0) -> float:
    """``max |g32 - g| / max |g|`` over every parameter: how far the reference's own float32
    gradient on this batch is from its float64 one ``grads`` (``rec``, ``seg``: the float64
    networks before the step, consumed)."""
    rec, seg = rec.float(), seg.float()
    terms, _, _ = training_loss(loss, rec, seg, target.float(), augmented.float(), mask.float(),
                                sspcab_weight)
    terms["loss"].backward()
    ours = named_gradients(rec, seg)
    return float(max(np.abs(ours[k] - grads[k]).max() for k in grads)
                 / max(np.abs(g).max() for g in grads.values()))


def load_train_helpers(root: Path) -> ModuleType:
    """``weights_init`` of ``train_DRAEM.py`` without importing its data loader (imgaug, cv2)
    and tensorboard: only the function's source is executed."""
    import ast

    tree = ast.parse((root / "train_DRAEM.py").read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "weights_init"]
    module = ModuleType("draem_train")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(root / "train_DRAEM.py"), "exec"),
         module.__dict__)
    return module


if __name__ == "__main__":
    main()
