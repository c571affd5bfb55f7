"""Parity fixture of ``favae`` (Dehaene & Eline, "Anomaly localization by modeling perceptual
features", 2020).

Reference: no authors' code was found (the public xiahaifeng1995/FAVAE-anomaly-detection-
localization-master is a third party's implementation with another network and loss). This
is an independent PyTorch implementation of the equations anomjax's docstring states, written
from the paper and that docstring, not from anomjax's code: the VAE of ``vae.py`` (this
folder); the loss per image ``-ELBO / (S * S * 3) + w * sum_l mean_{h,w} mean_c (phi_l(x) -
phi_l(x_hat))^2`` with one reparameterised sample (``eps`` fixed and stored) for the ELBO and
``x_hat = decoder(mu)`` for the feature term, averaged over the batch, ``w = 1``; Adam, learning
rate 5e-4. Map: the feature error ``sum_l`` of the per-position channel-mean squared
difference, upsampled bilinearly (``align_corners=False``) to the image size, plus the
gradient map ``mean_c |d loss(x) / d x|`` at ``z = mu`` (by autograd, through ``phi`` too),
each divided by its mean over the training images (here the same batch, as ``calibrate``
would), smoothed by anomjax's documented Gaussian (sigma 4, ``scipy.ndimage.gaussian_filter(
mode="reflect", truncate=4)``); image score: the maximum.

Feature network ``phi``: anomjax's default is EfficientNet-Lite0 and the paper's a VGG; the
parity runs on torchvision's ResNet-18 (``layer1``, ``layer2``) with the seeded random weights
of ``dfr.py`` (not stored), ImageNet-normalised inputs, eval mode, frozen.

Reduced: width 8, latent 16, two 32 x 32 RGB images; float32 values computed in float64.

    /tmp/venv-ref/bin/python experiments/parity/favae.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ae import smoothed  # noqa: E402
from common import gradients, nhwc, save_fixture, seed_everything, state  # noqa: E402
from dfr import IMAGENET_MEAN, IMAGENET_STD, seeded_resnet18  # noqa: E402
from torch_step import one_step  # noqa: E402
from vae import GaussianVAE  # noqa: E402

REFERENCE = ("independent PyTorch implementation of the FAVAE equations (no authors' code), "
             "ResNet-18 features")
SIZE, WIDTH, LATENT, BATCH, TAPS = 32, 8, 16, 2, ("layer1", "layer2")
#: The last decoder layer's initial weights times this, so that the untrained reconstruction
#: is not nearly constant: the ResNet's max-pooling of a nearly constant image has near-ties,
#: whose winner float32 rounding decides, and the feature term's gradient with it.
OUTPUT_GAIN = 30.0
LEARNING_RATE, FEATURE_WEIGHT = 5e-4, 1.0


def features(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``phi_l(x)`` ``[B, C_l, h_l, w_l]`` for the ``TAPS`` of the ResNet."""
    x = (x - IMAGENET_MEAN.double()) / IMAGENET_STD.double()
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = []
    for name in TAPS:
        x = getattr(net, name)(x)
        out.append(x)
    return out


def objective(vae: GaussianVAE, phi: torch.nn.Module, x: torch.Tensor,
              eps: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-image loss ``[B]`` and the per-position feature errors ``[B, h_l, w_l]``."""
    values = vae.elbo(x, eps)[0]
    recon = vae.decoder(vae.encoder(x)[:, :vae.latent])
    errors = [((a - b) ** 2).mean(1) for a, b in zip(features(phi, x), features(phi, recon),
                                                     strict=True)]
    feature = sum(e.mean(dim=(1, 2)) for e in errors)
    return -values / x[0].numel() + FEATURE_WEIGHT * feature, errors


def main() -> None:
    seed_everything(0)
    vae = GaussianVAE(WIDTH, LATENT, SIZE)
    with torch.no_grad():
        vae.decoder.deconv7.weight.mul_(OUTPUT_GAIN)
    weights = state(vae)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    eps = torch.randn(BATCH, LATENT)
    vae, x, eps = vae.double(), x.double(), eps.double()  # float32 values, in float64
    phi = seeded_resnet18().double()
    for p in phi.parameters():
        p.requires_grad_(False)

    x_in = x.clone().requires_grad_(True)  # maps of the initial weights
    per_image, errors = objective(vae, phi, x_in, None)
    print(f"reconstruction std {vae.decoder(vae.encoder(x)[:, :LATENT]).std():.3f}")
    (input_grad,) = torch.autograd.grad(per_image.sum(), x_in)
    feature_map = sum(torch.nn.functional.interpolate(e[:, None], size=(SIZE, SIZE),
                                                      mode="bilinear", align_corners=False)
                      for e in errors)[:, 0].detach()
    gradient_map = input_grad.abs().mean(1)
    norm_feature, norm_gradient = feature_map.mean(), gradient_map.mean()
    raw = (feature_map / norm_feature + gradient_map / norm_gradient).numpy()
    smooth = smoothed(raw)

    loss = objective(vae, phi, x, eps)[0].mean()
    loss.backward()
    grads = gradients(vae.named_parameters())
    stepped, updates = one_step(vae, torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE))
    save_fixture(
        "favae", REFERENCE, weights=weights, inputs={"images": nhwc(x), "noise": eps},
        outputs={"loss": loss.detach(), "feature_map": feature_map.numpy(),
                 "gradient_map": gradient_map.numpy(), "normalizer_feature": norm_feature,
                 "normalizer_gradient": norm_gradient, "map": smooth,
                 "score": smooth.max(axis=(1, 2)), **updates},
        grads=grads, stepped=stepped)


if __name__ == "__main__":
    main()
