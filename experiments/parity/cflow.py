"""CFLOW-AD parity fixture: the authors' decoders, loss, fibre mini-batch loop and map.

Reference: gudovskiy/cflow-ad@b2ebf9e673a0aa46992a3b18367ec066a57bba89, ``model.py``
(``positionalencoding2d``, ``freia_cflow_head``: FrEIA 0.2 ``AllInOneBlock`` couplings with
the condition concatenated, ``subnet_fc``, ``SOFTPLUS`` global affine, soft permutations),
``utils.py`` (``get_logp``), and ``train.py`` (``train_meta_epoch``: shuffled fibres, one Adam
step per ``N`` of them per level; ``test_meta_epoch`` and ``train``: per-level maximum of
``log p / C`` over the test set in float64, ``exp``, bilinear ``align_corners=True``
upsampling, sum over levels, ``max - sum``). The functions are imported from the snapshot
(``--reference-root``); the training loop and map formation of ``train.py`` are restated
here line by line on fixed tensors (``train.py`` itself needs the MVTec loaders and CUDA).

Reduced sizes: two levels of 12 and 9 channels (an odd width checks FrEIA's
``C - C // 2`` split) on 6x6 and 3x3 feature maps of a batch of 2, condition 16, 3
couplings, fibre mini-batch ``N = 16`` (authors: 256) so level 0 takes 4 steps and level 1
one. The encoder is not part of the fixture (its port is pinned separately): the features
are fixed inputs. The permutation matrices FrEIA draws (``w_perm``) and the fibre shuffles
(``torch.randperm``) are stored as inputs. Adam with the authors' settings (``lr`` 2e-4,
PyTorch's defaults otherwise; constant here, the schedule is compared by its own test).

    /tmp/venv-ref/bin/python experiments/parity/cflow.py --reference-root /tmp/refs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    nhwc,
    save_fixture,
    save_parameter_tree,
    seed_everything,
    to_numpy,
)

COMMIT = "b2ebf9e673a0aa46992a3b18367ec066a57bba89"
REFERENCE = f"gudovskiy/cflow-ad@{COMMIT[:7]} model.py, train.py (FrEIA 0.2)"
CHANNELS, SIDES, BATCH = (12, 9), (6, 3), 2
CONDITION, BLOCKS, CLAMP, N_FIBRES, LR, IMAGE = 16, 3, 1.9, 16, 2e-4, 24


def fibres(model, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, C, H, W]`` -> fibres ``[E, C]`` and positional encodings ``[E, P]`` (train.py)."""
    b, c, h, w = feats.shape
    p = model.positionalencoding2d(CONDITION, h, w).unsqueeze(0).repeat(b, 1, 1, 1)
    c_r = p.reshape(b, CONDITION, h * w).transpose(1, 2).reshape(-1, CONDITION)
    e_r = feats.reshape(b, c, h * w).transpose(1, 2).reshape(-1, c)
    return e_r, c_r


def log_prob(utils, decoder, e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    z, log_jac_det = decoder(e, [c])
    return utils.get_logp(e.shape[1], z, log_jac_det) / e.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, default=Path("/tmp/refs"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference_root / "cflow-ad"))
    import model  # the authors' model.py (imports FrEIA, timm and their custom_models)
    import utils

    seed_everything(0)
    config = SimpleNamespace(condition_vec=CONDITION, coupling_blocks=BLOCKS, clamp_alpha=CLAMP)
    decoders = [model.freia_cflow_head(config, c) for c in CHANNELS]
    weights, inputs, outputs = {}, {}, {}
    with torch.no_grad():  # move the global affine off its initial value so it is exercised
        for d in decoders:
            for block in d.module_list:
                block.global_scale.add_(0.3 * torch.randn_like(block.global_scale))
                block.global_offset.add_(0.1 * torch.randn_like(block.global_offset))
    for lv, d in enumerate(decoders):
        for k, block in enumerate(d.module_list):
            inputs[f"level{lv}/w_perm{k}"] = to_numpy(block.w_perm).copy()
            for name, value in block.state_dict().items():
                if not name.startswith("w_perm"):  # global_scale/offset [1, C] -> [C];
                    # copied: to_numpy shares the tensor's memory, which Adam steps below
                    weights[f"level{lv}/block{k}/{name}"] = to_numpy(value).copy().reshape(
                        value.shape[1:] if name.startswith("global") else value.shape)
    feats = [torch.randn(BATCH, c, s, s) * 2 + 0.5 for c, s in zip(CHANNELS, SIDES, strict=True)]
    for lv, f in enumerate(feats):
        inputs[f"level{lv}/features"] = nhwc(f)
        outputs[f"level{lv}/positional_encoding"] = to_numpy(
            model.positionalencoding2d(CONDITION, SIDES[lv], SIDES[lv]).permute(1, 2, 0))

    # each block's output and log-det (level 0, every fibre in order)
    e, c = fibres(model, feats[0])
    x = e
    for k, block in enumerate(decoders[0].module_list):
        (x,), jac = block([x], c=[c], jac=True)
        outputs[f"level0/block{k}/out"], outputs[f"level0/block{k}/log_det"] = x, jac

    # log p / C per fibre, the loss over every fibre (summed over levels), its gradients
    total = 0.0
    for lv, (d, f) in enumerate(zip(decoders, feats, strict=True)):
        lp = log_prob(utils, d, *fibres(model, f))
        outputs[f"level{lv}/log_prob"] = lp
        loss = torch.nn.LogSigmoid()(lp).neg().mean()
        outputs[f"level{lv}/loss"] = loss
        total = total + loss
    outputs["loss"] = total
    total.backward()
    grads = {}
    for lv, d in enumerate(decoders):
        for k, block in enumerate(d.module_list):
            for name, p in block.named_parameters():
                if p.grad is not None:
                    grads[f"level{lv}/block{k}/{name}"] = to_numpy(p.grad).reshape(
                        weights[f"level{lv}/block{k}/{name}"].shape)

    # the map of a fixed state: the fixture's batch as the test set (train.py after the test
    # epoch): per-level maximum over the set in float64, exp, align_corners upsampling, sum
    with torch.no_grad():
        score_map = 0.0
        for lv, (d, f) in enumerate(zip(decoders, feats, strict=True)):
            test_norm = log_prob(utils, d, *fibres(model, f)).double()
            outputs[f"level{lv}/test_max"] = test_norm.max()
            prob = torch.exp(test_norm - test_norm.max()).reshape(-1, SIDES[lv], SIDES[lv])
            score_map = score_map + F.interpolate(prob.unsqueeze(1), size=IMAGE,
                                                  mode="bilinear", align_corners=True).squeeze(1)
        super_mask = score_map.max() - score_map
        outputs["probability_sum"] = score_map
        outputs["super_mask"], outputs["image_score"] = super_mask, super_mask.amax(dim=(1, 2))

    # one image batch of training (train_meta_epoch): per level, shuffled fibres, one Adam
    # step per N of them; one optimiser over every decoder (zero_grad sets grads to None,
    # so a decoder is untouched by the other levels' steps)
    params = [p for d in decoders for p in d.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR)
    for lv, (d, f) in enumerate(zip(decoders, feats, strict=True)):
        e_r, c_r = fibres(model, f)
        perm = torch.randperm(e_r.shape[0])
        inputs[f"level{lv}/fibre_perm"] = to_numpy(perm).astype(np.int32)
        for i in range(e_r.shape[0] // N_FIBRES):
            idx = perm[torch.arange(i * N_FIBRES, (i + 1) * N_FIBRES)]
            loss = torch.nn.LogSigmoid()(log_prob(utils, d, e_r[idx], c_r[idx])).neg()
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
            outputs[f"level{lv}/chunk{i}/loss"] = loss.mean()
    stepped = {}
    for lv, d in enumerate(decoders):
        for k, block in enumerate(d.module_list):
            for name, value in block.state_dict().items():
                if not name.startswith("w_perm"):
                    stepped[f"level{lv}/block{k}/{name}"] = to_numpy(value).reshape(
                        weights[f"level{lv}/block{k}/{name}"].shape)
    save_fixture("cflow", REFERENCE, weights=weights, inputs=inputs,
                 outputs={k: to_numpy(v) for k, v in outputs.items()}, grads=grads,
                 stepped=stepped)

    # the paper's decoders (WRN50 layer2..4: 512/1024/2048 channels, condition 128, 8 blocks);
    # the rotations are replaced by identities for speed (their values are not written)
    model.Fm.all_in_one_block.special_ortho_group = SimpleNamespace(rvs=np.eye)
    paper = SimpleNamespace(condition_vec=128, coupling_blocks=8, clamp_alpha=1.9)
    save_parameter_tree("cflow", REFERENCE + ", WRN50 decoders", torch.nn.ModuleList(
        model.freia_cflow_head(paper, c) for c in (512, 1024, 2048)))


if __name__ == "__main__":
    main()
