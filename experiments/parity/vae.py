"""Parity fixture of ``vae`` (Kingma & Welling 2014, with the network and maps anomjax's
docstring names).

Reference: there is no single authors' code for this method (the network, the learned global
likelihood scale and the maps are anomjax's documented choices). This is an independent
PyTorch implementation of the VAE's equations, written from the paper and anomjax's
docstring, not from its code: the encoder (``bergmann_torch.Encoder``) gives ``2 * latent``
values, the first half ``mu`` and the second ``log sigma``; ``z = mu + sigma * eps`` (one
reparameterised sample, ``eps`` fixed here and stored); the decoder gives the mean of the
pixel likelihood ``N(x; x_hat(z), s^2)`` with ``s = exp(log_scale)``, one learned scalar
(initialised to 0); ``ELBO = sum log N - KL(N(mu, sigma^2) || N(0, I))`` in closed form; loss
``-mean ELBO / (S * S * 3)``; Adam, learning rate 5e-4. Maps at ``z = mu``: the
reconstruction error ``mean_c (x - x_hat(mu))^2`` and the gradient map
``mean_c |d ELBO(x) / d x|`` by autograd, each smoothed by anomjax's documented Gaussian
(sigma 4, ``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)``); image score: the
maximum.

Reduced: width 8, latent 16, two 32 x 32 RGB images; float32 weights, images and noise,
computed in float64.

    /tmp/venv-ref/bin/python experiments/parity/vae.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ae import smoothed  # noqa: E402
from bergmann_torch import Decoder, Encoder, scaled_layers  # noqa: E402
from common import gradients, nhwc, save_fixture, seed_everything, state  # noqa: E402
from torch_step import one_step  # noqa: E402

REFERENCE = "independent PyTorch implementation of the VAE equations (no single authors' code)"
SIZE, WIDTH, LATENT, BATCH = 32, 8, 16, 2
LEARNING_RATE = 5e-4


class GaussianVAE(nn.Module):
    """Posterior ``N(mu, diag sigma^2)`` from the encoder, likelihood mean from the decoder."""

    def __init__(self, width: int, latent: int, image_size: int):
        super().__init__()
        layers = scaled_layers(width)
        self.encoder = Encoder(layers, 2 * latent, image_size)
        self.decoder = Decoder(layers, latent, image_size)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.latent = latent

    def elbo(self, x: torch.Tensor, eps: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Per-image ``(ELBO, log-likelihood, KL)`` ``[B]`` each; ``eps=None``: at ``z = mu``."""
        code = self.encoder(x)
        mu, log_sigma = code[:, :self.latent], code[:, self.latent:]
        z = mu if eps is None else mu + torch.exp(log_sigma) * eps
        mean = self.decoder(z)
        s = torch.exp(self.log_scale)
        log_lik = (-0.5 * ((x - mean) / s) ** 2 - torch.log(s)
                   - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        kl = 0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(1)
        return log_lik - kl, log_lik, kl


def main() -> None:
    seed_everything(0)
    model = GaussianVAE(WIDTH, LATENT, SIZE)
    weights = state(model)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    eps = torch.randn(BATCH, LATENT)
    model, x, eps = model.double(), x.double(), eps.double()  # float32 values, in float64

    with torch.no_grad():  # maps of the initial weights
        recon = model.decoder(model.encoder(x)[:, :LATENT])
    x_in = x.clone().requires_grad_(True)
    (input_grad,) = torch.autograd.grad(model.elbo(x_in, None)[0].sum(), x_in)
    maps = {"reconstruction": ((x - recon) ** 2).mean(1).numpy(),
            "gradient": input_grad.abs().mean(1).numpy()}

    values, log_lik, kl = model.elbo(x, eps)
    loss = -values.mean() / x[0].numel()
    loss.backward()
    grads = gradients(model.named_parameters())
    stepped, updates = one_step(model, torch.optim.Adam(model.parameters(), lr=LEARNING_RATE))
    outputs = {"recon": nhwc(recon), "loss": loss.detach(),
               "log_likelihood": log_lik.mean().detach(), "kl": kl.mean().detach(), **updates}
    for name, raw in maps.items():
        smooth = smoothed(raw)
        outputs |= {f"map_{name}": raw, f"map_{name}_smoothed": smooth,
                    f"score_{name}": smooth.max(axis=(1, 2))}
    save_fixture("vae", REFERENCE, weights=weights, inputs={"images": nhwc(x), "noise": eps},
                 outputs=outputs, grads=grads, stepped=stepped)


if __name__ == "__main__":
    main()
