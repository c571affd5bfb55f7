"""CS-Flow parity fixture from the authors' code.

Reference: marco-rudolph/cs-flow@88a13b8b3c6eeb1e9bfdcef453adb552fb476cd3, ``model.py``
(``get_cs_flow_model``: ``ParallelPermute`` + ``parallel_glow_coupling_layer`` with
``CrossConvolutions`` from ``freia_funcs.py``), ``utils.py`` (``get_loss``, ``concat_maps``),
``train.py`` (Adam lr 2e-4, eps 1e-4, weight decay 1e-5 after ``clip_grad_norm_(..., 1)``)
and ``evaluate.py`` (image score ``mean(z^2 / 2)``; map ``mean_c z_0^2`` of the finest scale,
upsampled bilinearly, ``align_corners=False``). The ``product`` map is anomalib 2.7's
``csflow.anomaly_map.AnomalyMapGenerator(mode=ALL)`` (product over the scales of the upsampled
``mean_c z_s^2``), written here from its definition on the reference latents (anomalib is not
installed); ``mean`` is anomjax's own option (mean over scales of upsampled ``mean_c z^2 / 2``).

Stubs (the script imports the authors' modules unchanged): ``config`` is a module built here
with reduced widths (8 channels, maps 8/4/2, hidden width 16, the authors' 4 blocks with
kernels 3, 3, 3, 5, clamp 3, ``use_gamma``); ``efficientnet_pytorch`` (imported by
``model.py`` for the feature extractor, which this fixture does not use) is an empty module.
The flow's input is a fixed random feature pyramid: the backbone is not part of this parity
(EfficientNet-B5 against our Lite0 is a documented deviation). ``gamma`` starts at 0 in the
authors' code (every coupling the identity); here each is drawn in [0.5, 1.5] so that every
subnet shapes the output.

Run (after ``git --git-dir=<fetched cs-flow> archive HEAD | tar -x -C /tmp/refs/csflow``;
``tar`` stops at the repository's missing LFS feature files, extract the ``.py`` files with
``git show HEAD:<file>`` if so)::

    /tmp/venv-ref/bin/python experiments/parity/csflow.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything, state

REFERENCE = ("marco-rudolph/cs-flow@88a13b8b3c6eeb1e9bfdcef453adb552fb476cd3 "
             "model.py, freia_funcs.py, utils.py, train.py, evaluate.py")
CHANNELS, MAP, HIDDEN, BATCH, IMAGE = 8, 8, 16, 2, 64  # image side = the map side x stride 8


def config(channels: int, map_side: int, hidden: int) -> types.ModuleType:
    """The authors' ``config`` with reduced sizes (their values otherwise)."""
    c = types.ModuleType("config")
    c.device, c.n_scales, c.clamp, c.max_grad_norm = "cpu", 3, 3, 1.0
    c.n_coupling_blocks, c.fc_internal, c.lr_init, c.use_gamma = 4, hidden, 2e-4, True
    c.n_feat, c.map_size = channels, (map_side, map_side)
    c.kernel_sizes = [3] * (c.n_coupling_blocks - 1) + [5]
    c.img_size = (32 * map_side, 32 * map_side)
    c.class_name, c.batch_size, c.dataset_path = "dummy_data", 16, "data/images"
    return c


def import_reference(root: Path, channels: int, map_side: int, hidden: int) -> tuple:
    sys.modules["config"] = config(channels, map_side, hidden)
    effnet = types.ModuleType("efficientnet_pytorch")
    effnet.EfficientNet = None
    sys.modules["efficientnet_pytorch"] = effnet
    sys.path.insert(0, str(root / "csflow"))
    import model  # noqa: PLC0415 (the authors' module, importable only after the stubs)
    import utils  # noqa: PLC0415
    return model, utils


def upsampled(z2: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> channel mean ``[B, 1, IMAGE, IMAGE]`` (bilinear, half-pixel)."""
    return F.interpolate(z2.mean(dim=1, keepdim=True), size=(IMAGE, IMAGE), mode="bilinear",
                         align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    model, utils = import_reference(args.reference_root, 304, 24, 1024)
    with torch.device("meta"):  # shapes only: the full-width flow has ~280M parameters
        full = model.get_cs_flow_model()
    save_parameter_tree("csflow", REFERENCE + " (EfficientNet-B5 304 channels, 768 px)", full)
    for name in ("config", "model", "utils", "freia_funcs"):
        sys.modules.pop(name, None)
    model, utils = import_reference(args.reference_root, CHANNELS, MAP, HIDDEN)

    seed_everything(0)
    flow = model.get_cs_flow_model()
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if "gamma" in name:
                p.uniform_(0.5, 1.5)
    weights = {k: v.copy() for k, v in state(flow).items()}  # state() shares the tensors' memory
    feats = [torch.randn(BATCH, CHANNELS, MAP // 2 ** s, MAP // 2 ** s) for s in range(3)]

    blocks: list[list[torch.Tensor]] = []
    for module in flow.module_list:
        if type(module).__name__ == "parallel_glow_coupling_layer":
            module.register_forward_hook(lambda _m, _i, out: blocks.append(list(out)))
    z, jac = model.nf_forward(flow, feats)
    loss = utils.get_loss(z, jac)
    loss.backward()
    grads = {k: v.copy() for k, v in gradients(flow.named_parameters()).items()}  # clipped next
    torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
    torch.optim.Adam(flow.parameters(), lr=2e-4, eps=1e-4, weight_decay=1e-5).step()
    stepped = state(flow)

    z = [t.detach() for t in z]
    outputs = {"log_det": sum(jac).detach(), "loss": loss.detach(),
               "image_score": np.mean(utils.t2np(utils.concat_maps(z)) ** 2 / 2, axis=(1, 2)),
               "map_finest": upsampled(z[0] ** 2)[:, 0],
               "map_product": torch.prod(torch.stack([upsampled(t ** 2) for t in z]), 0)[:, 0],
               "map_mean": torch.stack([upsampled(t ** 2 / 2) for t in z]).mean(0)[:, 0]}
    for k, out in enumerate(blocks):
        for s, y in enumerate(out):
            outputs[f"block{k}/scale{s}"] = nhwc(y.detach())
    save_fixture("csflow", REFERENCE, weights=weights,
                 inputs={f"scale{s}": nhwc(f) for s, f in enumerate(feats)},
                 outputs=outputs, grads=grads, stepped=stepped)


if __name__ == "__main__":
    main()
