"""Does anomalib 2.7's FastFlow objective have a floor? Its own flow and LayerNorm, trained
on full-rank i.i.d. N(0, 1) features, with and without the LayerNorm's learned affine.

A perfect model of N(0, 1) features has ``0.5 E||z||^2 - log det = D / 2`` (64 here). With
``elementwise_affine=True`` (anomalib's) the LayerNorm scale shrinks outside the
log-determinant and the NLL falls without a floor; without it the NLL levels off. Written
for issue #23 (FastFlow's learning curves); the numbers are in ``flows_a.md``.

    OMP_NUM_THREADS=1 /tmp/venv-ref/bin/python experiments/parity/fastflow_floor.py --affine
    OMP_NUM_THREADS=1 /tmp/venv-ref/bin/python experiments/parity/fastflow_floor.py
"""

from __future__ import annotations

import argparse

import torch

CHANNELS, SIDE, SAMPLES, BATCH = 8, 4, 64, 16


def main() -> None:
    from anomalib.models.image.fastflow.loss import FastflowLoss
    from anomalib.models.image.fastflow.torch_model import create_fast_flow_block

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--affine", action="store_true", help="anomalib's learned affine")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    feats = torch.randn(SAMPLES, CHANNELS, SIDE, SIDE)
    torch.manual_seed(1)
    norm = torch.nn.LayerNorm([CHANNELS, SIDE, SIDE], elementwise_affine=args.affine)
    flow = create_fast_flow_block([CHANNELS, SIDE, SIDE], conv3x3_only=False, hidden_ratio=1.0,
                                  flow_steps=4)
    params = list(norm.parameters()) + list(flow.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)  # anomalib's
    for step in range(args.steps + 1):
        z, log_det = flow(norm(feats[torch.randint(0, SAMPLES, (BATCH,))]))
        loss = FastflowLoss()([z], [log_det])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % (args.steps // 10) == 0:
            scale = norm.weight.abs().mean().item() if args.affine else 1.0
            print(f"affine={args.affine} step {step:5d} NLL {loss.item():9.1f} "
                  f"(D/2 = {CHANNELS * SIDE * SIDE / 2:.0f}) |LayerNorm scale| {scale:.4f} "
                  f"log det {log_det.mean().item():8.1f}", flush=True)


if __name__ == "__main__":
    main()
