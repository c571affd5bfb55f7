"""AnoGAN parity fixture: an independent PyTorch implementation of the paper's equations.

AnoGAN (Schlegl et al., IPMI 2017) has no public code from its authors, so this reference is
written from the paper (and DCGAN, Radford et al. 2016, which it trains), not from anomjax:

* DCGAN training: ``z ~ U(-1, 1)``; the discriminator minimises ``BCE(D(x), 1) +
  BCE(D(G(z)), 0)``, then the generator ``BCE(D(G(z)), 1)`` (non-saturating) with the same
  ``z`` and the updated discriminator; both networks in training mode (batch statistics);
  Adam lr 2e-4, betas (0.5, 0.999) (DCGAN's settings);
* the latent search of section 2.2: ``A(z) = (1 - lambda) sum |x - G(z)| + lambda sum |f(x) -
  f(G(z))|`` (residual loss + feature-matching discrimination loss, ``f`` the
  discriminator's last hidden layer), lambda = 0.1, minimised over ``z`` by gradient steps
  (the paper's rate is not stated: Adam lr 0.05, anomjax's documented choice), networks on
  running statistics; score ``A(z_Gamma)``, residual image ``|x - G(z_Gamma)|``.

Networks: the DCGAN ``Decoder`` and ``NetD`` of samet-akcay/ganomaly@78da4ea
``lib/networks.py`` (public DCGAN code independent of anomjax; ``NetD``'s sigmoid output is
fed to ``BCELoss``). Every random draw (``z``, the search's ``z0``) is stored. Reduced
sizes: 32 x 32 RGB, width 8, latent 16, batch 4, 5 search steps.

Run: ``/tmp/venv-ref/bin/python experiments/parity/anogan.py --reference-root /tmp/refs``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from types import SimpleNamespace

import numpy as np
import torch
from common import gradients, nhwc, save_fixture, seed_everything, state

REFERENCE = ("numpy/torch implementation of the AnoGAN paper's equations (no authors' code) "
             "on ganomaly@78da4ea DCGAN nets")
SIZE, WIDTH, LATENT, BATCH = 32, 8, 16, 4
LR, BETAS, LAM, SEARCH_LR, SEARCH_STEPS = 2e-4, (0.5, 0.999), 0.1, 0.05, 5


def copied(module: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """The state dict, copied (``state`` shares memory with the parameters)."""
    return {f"{prefix}.{k}": v for k, v in state(copy.deepcopy(module)).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-root", default="/tmp/refs")
    args = parser.parse_args()
    seed_everything(0)
    sys.path.insert(0, f"{args.reference_root}/ganomaly")
    from lib.networks import Decoder, NetD, weights_init

    gen = Decoder(SIZE, LATENT, 3, WIDTH, 1)
    disc = NetD(SimpleNamespace(isize=SIZE, nc=3, ngf=WIDTH, ngpu=1, extralayers=0))
    for net in (gen, disc):
        net.apply(weights_init)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.normal_(module.bias, 0.0, 0.1)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(BATCH, 3, SIZE, SIZE)).astype(np.float32)
    z = rng.uniform(-1, 1, size=(BATCH, LATENT)).astype(np.float32)
    z0 = rng.uniform(-1, 1, size=(BATCH, LATENT)).astype(np.float32)
    x = torch.from_numpy(images) * 2 - 1
    code = torch.from_numpy(z)[:, :, None, None]
    weights = {**copied(gen, "gen"), **copied(disc, "disc")}
    bce = torch.nn.BCELoss()
    gen.train()
    disc.train()

    # Discriminator step.
    fake = gen(code).detach()
    d_loss = bce(disc(x)[0], torch.ones(BATCH)) + bce(disc(fake)[0], torch.zeros(BATCH))
    d_loss.backward()
    d_grads = {f"disc.{k}": v.copy() for k, v in gradients(disc.named_parameters()).items()}
    torch.optim.Adam(disc.parameters(), lr=LR, betas=BETAS).step()

    # Generator step, same z, updated discriminator.
    disc.zero_grad()
    g_loss = bce(disc(gen(code))[0], torch.ones(BATCH))
    g_loss.backward()
    g_grads = {f"gen.{k}": v.copy() for k, v in gradients(gen.named_parameters()).items()}
    torch.optim.Adam(gen.parameters(), lr=LR, betas=BETAS).step()
    stepped = {**copied(gen, "gen"), **copied(disc, "disc")}

    # Latent search on the stepped networks (running statistics).
    gen.eval()
    disc.eval()
    for p in (*gen.parameters(), *disc.parameters()):
        p.requires_grad_(False)
    with torch.no_grad():
        f_real = disc(x)[1]

    def loss(z_search: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        generated = gen(z_search[:, :, None, None])
        residual = torch.sum(torch.abs(x - generated), dim=(1, 2, 3))
        discrimination = torch.sum(torch.abs(f_real - disc(generated)[1]), dim=(1, 2, 3))
        return (1 - LAM) * residual + LAM * discrimination, generated

    z_search = torch.from_numpy(z0.copy()).requires_grad_(True)
    search = torch.optim.Adam([z_search], lr=SEARCH_LR)
    for _ in range(SEARCH_STEPS):
        search.zero_grad()
        loss(z_search)[0].sum().backward()
        search.step()
    with torch.no_grad():
        score, recon = loss(z_search)

    save_fixture(
        "anogan", REFERENCE, weights=weights,
        inputs={"images": nhwc(torch.from_numpy(images)), "z": z, "z0": z0},
        outputs={"fake": nhwc(fake), "d_loss": d_loss, "g_loss": g_loss,
                 "search_recon": nhwc(recon), "search_score": score},
        grads={**d_grads, **g_grads}, stepped=stepped)


if __name__ == "__main__":
    main()
