"""RIAD parity fixture. The authors (Zavrtanik et al.) published no code; the reference is the
unofficial PyTorch implementation taikiinoue45/RIAD@36139f9f8fb9092e72fc9f51e8871535276c1f68
(``riad/runner/runner.py``: ``_create_disjoint_masks``, ``_reconstruct`` (one pass per mask),
``_train``'s loss ``MSGMS + SSIM + MSE``; ``riad/criterions/msgms.py`` ``MSGMSLoss`` (4 scales,
as ``configs/mvtec.yaml``) and its map; ``riad/criterions/ssim.py`` ``SSIMLoss`` (11, 1.5);
``configs/mvtec.yaml``: ``Adam(lr=1e-4, weight_decay=1e-5)``) with, as the network, the same
group's DRAEM discriminative U-Net, VitjanZ/DRAEM@2dbf67397ab5c10a1494e5ae70ab59a25d7c35ef
``model_unet.py`` ``DiscriminativeSubNetwork(3, 3, base_channels=4)`` (anomjax's RIAD U-Net is
that network; the unofficial repository has its own U-Net).

What is written (``tests/fixtures/parity/riad.npz``): a batch of two 32 px images in
``[0, 1]``, the three disjoint masks the runner draws (cutout 8), the train-mode
reconstruction, the three loss terms and their sum, every gradient, the parameters and
running statistics after one Adam step, and, with the stepped network in eval mode, the
reconstruction and the MSGMS map (``as_loss=False``) for masks of cutout 4.

``runner.py`` imports mlflow, ``riad.metrics``, ``riad.utils`` (matplotlib figures) and the
hydra/albumentations ``BaseRunner``; none of it is used by the two methods called here, so
those modules are stubbed and ``runner.py`` is loaded by path; the methods run on a stand-in
``self`` holding ``cfg.params`` and the model.

Run: ``/tmp/venv-ref/bin/python experiments/parity/riad.py --reference-root /tmp/refs`` with
the repositories extracted to ``/tmp/refs/riad`` and ``/tmp/refs/draem``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch
from common import gradients, nhwc, save_fixture, seed_everything, state

REFERENCE = ("taikiinoue45/RIAD@36139f9f8fb9092e72fc9f51e8871535276c1f68 (unofficial) "
             "riad/runner/runner.py, riad/criterions; network VitjanZ/DRAEM@2dbf673 "
             "model_unet.py DiscriminativeSubNetwork")
WIDTH = 4


def load_runner(root: Path) -> type:
    """``runner.Runner`` with its unused imports stubbed (see the module docstring)."""
    stubs = {"mlflow": {}, "riad": {}, "riad.metrics": {"compute_auroc": None},
             "riad.runner": {"BaseRunner": object},
             "riad.utils": {"mean_smoothing": None, "savefig": None}}
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    spec = importlib.util.spec_from_file_location("riad_runner", root / "riad/runner/runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Runner


def load_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    root = args.reference_root
    runner_class = load_runner(root / "riad")
    msgms = load_file(root / "riad/riad/criterions/msgms.py", "riad_msgms").MSGMSLoss(4)
    ssim = load_file(root / "riad/riad/criterions/ssim.py", "riad_ssim").SSIMLoss(11, 1.5)
    sys.path.insert(0, str(root / "draem"))
    from model_unet import DiscriminativeSubNetwork

    seed_everything(0)
    net = DiscriminativeSubNetwork(3, 3, base_channels=WIDTH)
    weights = {k: v.copy() for k, v in state(net).items()}
    runner = types.SimpleNamespace(
        cfg=types.SimpleNamespace(params=types.SimpleNamespace(device="cpu",
                                                               num_disjoint_masks=3)),
        model=net)
    drawn: list[list[torch.Tensor]] = []

    def create_masks(*args: object) -> list[torch.Tensor]:
        drawn.append(runner_class._create_disjoint_masks(runner, *args))
        return drawn[-1]

    runner._create_disjoint_masks = create_masks
    images = torch.rand(2, 3, 32, 32)

    net.train()
    reconst = runner_class._reconstruct(runner, images, 8)
    losses = {"mse": torch.nn.functional.mse_loss(images, reconst), "msgms": msgms(images, reconst),
              "ssim": ssim(images, reconst)}
    total = losses["msgms"] + losses["ssim"] + losses["mse"]  # runner.py _train
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5)
    opt.zero_grad()
    total.backward()
    grads = {k: v.copy() for k, v in gradients(net.named_parameters()).items()}
    opt.step()
    stepped = {k: v.copy() for k, v in state(net).items()}

    net.eval()
    with torch.no_grad():
        eval_reconst = runner_class._reconstruct(runner, images, 4)
        amap = msgms(images, eval_reconst, as_loss=False)[:, 0]

    hidden = {f"masks_{c}": 1 - torch.stack(m).numpy() for c, m in zip((8, 4), drawn,
                                                                        strict=True)}
    save_fixture("riad", REFERENCE, weights=weights,
                 inputs={"images": nhwc(images), **hidden},
                 outputs={"reconstruction": nhwc(reconst.detach()), "loss": total.detach(),
                          **{k: v.detach() for k, v in losses.items()},
                          "eval_reconstruction": nhwc(eval_reconst), "msgms_map": amap},
                 grads=grads, stepped=stepped)


if __name__ == "__main__":
    main()
