"""Parity fixture of ``memae`` (Gong et al., "Memorizing Normality to Detect Anomaly", ICCV 2019).

Reference: the authors' code,
donggong1/memae-anomaly-detection@ceece7714fb241e82ef3f3785d3d1ed86c28113e,
``models/memory_module.py`` (``MemModule``: dot-product addressing, softmax, ReLU hard
shrinkage, L1 renormalisation) and ``models/entropy_loss.py`` (``EntropyLossEncap``), with the
training loss and optimiser of ``script_training.py`` (``MSELoss() + EntropyLossWeight *
entropy``, weight 0.0002; ``torch.optim.Adam(lr=1e-4)``). Their image networks are not
released (the repository has the 3-D video network only), and anomjax puts the memory between
Bergmann et al.'s encoder and decoder, so the encoder/decoder around ``MemModule`` are the
independent PyTorch implementation of the paper's network (``bergmann_torch.py``). The
shrinkage threshold is the paper's rule as anomjax's default applies it, ``1 / N`` for N
slots. Map: the squared residual averaged over channels, smoothed by anomjax's documented
Gaussian (sigma 4, ``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)``); image
score: its maximum.

Reduced: width 8, 20 slots (threshold 0.05), two 32 x 32 RGB images; float32 weights and
images, computed in float64. The script checks that no addressing weight lies within 1e-6 of
the threshold (the hard shrinkage is discontinuous there; float32 rounding moves a weight by
about 1e-8). The full-width network (100 slots, 128 px) is compared by its parameter tree
(``memae_tree.json``).

    git --git-dir=<fetched repo> archive HEAD | tar -x -C /tmp/refs/memae
    /tmp/venv-ref/bin/python experiments/parity/memae.py --reference-root /tmp/refs
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ae import smoothed  # noqa: E402
from bergmann_torch import Decoder, Encoder, scaled_layers  # noqa: E402
from checkout import reference_checkout  # noqa: E402
from common import (  # noqa: E402
    gradients,
    nhwc,
    save_fixture,
    save_parameter_tree,
    seed_everything,
    state,
)
from torch_step import one_step  # noqa: E402

REFERENCE = ("donggong1/memae-anomaly-detection@ceece7714fb2 models/memory_module.py, "
             "entropy_loss.py, script_training.py (+ independent Bergmann nets)")
SIZE, WIDTH, SLOTS, BATCH = 32, 8, 20, 2
SEED = 0
MARGIN = 1e-6  # float32 rounding moves a weight by ~1e-8
ENTROPY_WEIGHT, LEARNING_RATE = 0.0002, 1e-4


class MemoryAutoencoder(nn.Module):
    """Bergmann encoder -> authors' ``MemModule`` on its ``[B, c, S/16, S/16]`` map -> decoder."""

    def __init__(self, mem_module: type, width: int, slots: int, image_size: int):
        super().__init__()
        layers = scaled_layers(width)
        self.encoder = Encoder(layers, 1, image_size, bottleneck=False)
        self.memory = mem_module(mem_dim=slots, fea_dim=layers[-1][0], shrink_thres=1.0 / slots)
        self.decoder = Decoder(layers, 1, image_size, bottleneck=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, addressing weights [B, N, h, w], encoder features [B, c, h, w])``."""
        feats = self.encoder(x, spatial=True)
        out = self.memory(feats)
        return self.decoder(out["output"]), out["att"], feats


def main() -> None:
    reference_checkout("memae", __doc__.splitlines()[0])
    from models.entropy_loss import EntropyLossEncap
    from models.memory_module import MemModule

    save_parameter_tree("memae", REFERENCE + ", full width, 100 slots, 128 px",
                        MemoryAutoencoder(MemModule, 32, 100, 128))

    seed_everything(SEED)
    model = MemoryAutoencoder(MemModule, WIDTH, SLOTS, SIZE)
    weights = state(model)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    model, x = model.double(), x.double()  # float32 values, computed in float64

    x_hat, att, feats = model(x)
    raw = torch.softmax(torch.einsum("bchw,nc->bhwn", feats, model.memory.memory.weight), -1)
    margin = float((raw - 1.0 / SLOTS).abs().min().detach())
    if margin < MARGIN:
        raise SystemExit(f"an addressing weight is {margin:.1e} from the threshold: reseed")
    mse = nn.MSELoss()(x_hat, x)
    entropy = EntropyLossEncap()(att)
    loss = mse + ENTROPY_WEIGHT * entropy
    loss.backward()
    grads = gradients(model.named_parameters())
    stepped, updates = one_step(model, torch.optim.Adam(model.parameters(), lr=LEARNING_RATE))

    error_map = ((x - x_hat) ** 2).mean(1).detach().numpy()
    smooth = smoothed(error_map)
    print(f"threshold margin {margin:.1e}, {(att == 0).double().mean():.0%} weights shrunk to 0")
    save_fixture(
        "memae", REFERENCE, weights=weights, inputs={"images": nhwc(x)},
        outputs={"recon": nhwc(x_hat), "addressing": nhwc(att), "mse": mse.detach(),
                 "entropy": entropy.detach(), "loss": loss.detach(), "map": error_map,
                 "map_smoothed": smooth, "score": smooth.max(axis=(1, 2)), **updates},
        grads=grads, stepped=stepped)


if __name__ == "__main__":
    main()
