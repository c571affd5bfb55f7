"""FastFlow parity fixture: anomalib 2.7's flows, LayerNorms, loss, Adam step and map.

Reference: anomalib 2.7.0 ``anomalib.models.image.fastflow`` (the paper published no code):
``torch_model.create_fast_flow_block`` (FrEIA ``SequenceINN`` of anomalib's copy of FrEIA's
``AllInOneBlock``: ``conv k -> ReLU -> conv k`` subnets, ``k`` alternating 3 and 1, clamp 2.0,
hard permutations), the per-level ``nn.LayerNorm([C, h, w])`` of ``FastflowModel``,
``loss.FastflowLoss``, ``anomaly_map.AnomalyMapGenerator`` and the optimiser of
``lightning_model.Fastflow.configure_optimizers`` (Adam, lr 1e-3, weight decay 1e-5).

Reduced sizes: two levels of 8 and 7 channels (odd: FrEIA's ``C - C // 2`` split) on 8x8 and
4x4 feature maps (strides 4 and 8 of a 32 px input), batch 2, 4 flow steps, hidden ratio 1.
The backbone is not part of the fixture (the ResNet-18 port is pinned separately): its
features are fixed inputs; ``FastflowModel``'s full ResNet-18 flows and norms at 256 px are
written as ``fastflow_tree.json``. Layout changes made here: ``global_scale``/``offset``
``[1, C, 1, 1] -> [C]`` and LayerNorm ``[C, h, w] -> [h, w, C]``; FrEIA's permutation
matrices (``w_perm``) are stored as inputs (the random draws).

    /tmp/venv-ref/bin/pip install anomalib==2.7.0 FrEIA
    /tmp/venv-ref/bin/python experiments/parity/fastflow.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import nhwc, save_fixture, save_parameter_tree, seed_everything, to_numpy  # noqa: E402

REFERENCE = "anomalib 2.7.0 anomalib.models.image.fastflow (FastflowModel, FastflowLoss)"
CHANNELS, SIDES, BATCH, STEPS, IMAGE = (8, 7), (8, 4), 2, 4, 32


def ours_layout(name: str, value: torch.Tensor) -> np.ndarray:
    """A copy of ``value`` in anomjax's layout (see the module docstring)."""
    value = to_numpy(value).copy()  # a copy: to_numpy shares memory with the tensor
    if name.startswith("norm"):
        return value.transpose(1, 2, 0)
    if name.split(".")[-1] in ("global_scale", "global_offset"):
        return value.reshape(-1)
    return value


def main() -> None:
    from anomalib.models.image.fastflow.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.fastflow.loss import FastflowLoss
    from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block

    seed_everything(0)
    model = torch.nn.ModuleDict({
        "norm": torch.nn.ModuleList(torch.nn.LayerNorm([c, s, s], elementwise_affine=True)
                                    for c, s in zip(CHANNELS, SIDES, strict=True)),
        "flow": torch.nn.ModuleList(create_fast_flow_block([c, s, s], conv3x3_only=False,
                                                           hidden_ratio=1.0, flow_steps=STEPS)
                                    for c, s in zip(CHANNELS, SIDES, strict=True))})
    with torch.no_grad():  # move the LayerNorm affine and the global affine off their
        for name, p in model.named_parameters():  # initial values so they are exercised
            if name.startswith("norm") or "global" in name:
                p.add_(0.2 * torch.randn_like(p))
    weights, inputs, outputs = {}, {}, {}
    for name, value in model.state_dict().items():
        if name.endswith("w_perm"):
            inputs[name] = to_numpy(value).copy()
        elif not name.endswith("w_perm_inv"):
            weights[name] = ours_layout(name, value)
    feats = [torch.randn(BATCH, c, s, s) * 3 + 1 for c, s in zip(CHANNELS, SIDES, strict=True)]
    for lv, f in enumerate(feats):
        inputs[f"level{lv}/features"] = nhwc(f)

    zs, jacs = [], []
    for lv, f in enumerate(feats):
        x = model["norm"][lv](f)
        outputs[f"level{lv}/normed"] = nhwc(x)
        for k, block in enumerate(model["flow"][lv].module_list):
            (x,), jac = block([x], jac=True)
            outputs[f"level{lv}/block{k}/out"], outputs[f"level{lv}/block{k}/log_det"] = (
                nhwc(x), to_numpy(jac).copy())
        z, log_jac = model["flow"][lv](model["norm"][lv](f))
        outputs[f"level{lv}/z"], outputs[f"level{lv}/log_det"] = nhwc(z), to_numpy(log_jac)
        zs.append(z)
        jacs.append(log_jac)
    loss = FastflowLoss()(zs, jacs)
    outputs["loss"] = to_numpy(loss)
    with torch.no_grad():
        anomaly_map = AnomalyMapGenerator(input_size=(IMAGE, IMAGE))(zs)
        outputs["anomaly_map"] = to_numpy(anomaly_map[:, 0])
        outputs["image_score"] = to_numpy(torch.amax(anomaly_map, dim=(-2, -1))[:, 0])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=0.00001)
    optimizer.zero_grad()
    loss.backward()
    grads = {n: ours_layout(n, p.grad) for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    stepped = {n: ours_layout(n, v) for n, v in model.state_dict().items() if "w_perm" not in n}
    save_fixture("fastflow", REFERENCE, weights=weights, inputs=inputs, outputs=outputs,
                 grads=grads, stepped=stepped)

    full = FastflowModel(input_size=(256, 256), backbone="resnet18", pre_trained=False)
    save_parameter_tree("fastflow", REFERENCE + ", resnet18 at 256 px: norms and flows",
                        torch.nn.ModuleDict({"norms": full.norms,
                                             "fast_flow_blocks": full.fast_flow_blocks}))


if __name__ == "__main__":
    main()
