"""Parity fixture of ``ae`` (Bergmann et al.'s SSIM autoencoder, VISAPP 2019).

Reference: there is no public authors' code. This is an independent PyTorch implementation of
the paper's equations and architecture, written from the paper, not from anomjax:
``bergmann_torch.Autoencoder`` (Table 1), SSIM (Wang et al. 2004) with an 11-tap Gaussian
window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (co)variances and symmetric ("reflect" in
scipy's naming) padding, per channel and averaged, written here with torch operations so that
it has gradients; its map is pinned against ``skimage.metrics.structural_similarity``
(scikit-image, ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``) before the
fixture is written. Training: the SSIM loss ``1 - mean SSIM`` (and the L2 variant), Adam with
the paper's learning rate 2e-4 and weight decay 1e-5 (``torch.optim.Adam``'s coupled decay).
Map: ``1 - SSIM`` per pixel (L2: the squared residual averaged over channels), smoothed by
anomjax's documented post-processing, a Gaussian of sigma 4 that is
``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)``; image score: its maximum.

Reduced: width 8 (a quarter of the paper's widths), latent 16, two 32 x 32 RGB images. The
weights and images are float32 values; the reference computes in float64 (stored as float32),
so the measured errors are anomjax's float32 rounding. The full-width network (the paper's
128 px, latent 100) is compared by its parameter tree (``ae_tree.json``).

    /tmp/venv-ref/bin/python experiments/parity/ae.py   # needs scikit-image
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bergmann_torch import Autoencoder  # noqa: E402
from common import (  # noqa: E402
    gradients,
    nhwc,
    save_fixture,
    save_parameter_tree,
    seed_everything,
    state,
)
from torch_step import one_step  # noqa: E402

REFERENCE = ("independent PyTorch implementation of Bergmann et al. 2019 (no public code), "
             "SSIM pinned to scikit-image")
SIZE, WIDTH, LATENT, BATCH = 32, 8, 16, 2
LEARNING_RATE, WEIGHT_DECAY = 2e-4, 1e-5
MAP_SIGMA = 4.0


def symmetric_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """``[N, C, H, W]`` padded by ``r`` on both spatial sides, edge repeated (scipy "reflect")."""
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1)


def gaussian_filter_torch(x: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Separable normalised Gaussian of ``[N, 1, H, W]`` (``size`` taps), same-size output."""
    t = torch.arange(size, dtype=x.dtype) - (size - 1) / 2
    taps = torch.exp(-0.5 * (t / sigma) ** 2)
    taps = taps / taps.sum()
    x = symmetric_pad(x, (size - 1) // 2)
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, size, 1))
    return torch.nn.functional.conv2d(x, taps.view(1, 1, 1, size))


def ssim_per_channel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map ``[B, C, H, W]`` of images in [0, 1] (Wang et al. 2004, eq. 13)."""
    b, c, h, w = x.shape
    px, py = x.reshape(b * c, 1, h, w), y.reshape(b * c, 1, h, w)
    ux, uy = gaussian_filter_torch(px), gaussian_filter_torch(py)
    vx = gaussian_filter_torch(px * px) - ux * ux
    vy = gaussian_filter_torch(py * py) - uy * uy
    vxy = gaussian_filter_torch(px * py) - ux * uy
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, c, h, w)


def check_against_skimage(x: torch.Tensor, y: torch.Tensor, ssim: torch.Tensor) -> np.ndarray:
    """scikit-image's SSIM maps ``[B, C, H, W]``; raises unless ours equals them."""
    x64, y64 = x.detach().double().numpy(), y.detach().double().numpy()
    ref = np.stack([np.stack([structural_similarity(
        x64[i, j], y64[i, j], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, full=True)[1] for j in range(x.shape[1])]) for i in range(x.shape[0])])
    error = np.max(np.abs(ssim.detach().double().numpy() - ref))
    if error > 1e-5:
        raise SystemExit(f"torch SSIM differs from scikit-image by {error:.2e}")
    print(f"torch SSIM = scikit-image SSIM within {error:.1e}")
    return ref


def smoothed(maps: np.ndarray) -> np.ndarray:
    """The library's map smoothing, by scipy: ``[B, H, W]`` -> ``[B, H, W]``."""
    return np.stack([gaussian_filter(m.astype(np.float64), MAP_SIGMA, mode="reflect",
                                     truncate=4.0) for m in maps])


def main() -> None:
    save_parameter_tree("ae", REFERENCE + ", full width at 128 px, latent 100",
                        Autoencoder(32, 100, 128))
    seed_everything(0)
    model = Autoencoder(WIDTH, LATENT, SIZE)
    weights = state(model)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    model, x = model.double(), x.double()  # float32 values, computed in float64

    recon = model(x)
    ssim = ssim_per_channel(x, recon)
    ssim_ref = check_against_skimage(x, recon, ssim)
    loss = 1.0 - ssim.mean()
    loss.backward()
    grads = gradients(model.named_parameters())
    stepped, updates = one_step(model, torch.optim.Adam(model.parameters(), lr=LEARNING_RATE,
                                                        weight_decay=WEIGHT_DECAY))

    ssim_map = (1.0 - ssim.mean(1)).detach().numpy()
    l2_map = ((x - recon) ** 2).mean(1).detach().numpy()
    ssim_smooth, l2_smooth = smoothed(ssim_map), smoothed(l2_map)
    save_fixture(
        "ae", REFERENCE, weights=weights, inputs={"images": nhwc(x)},
        outputs={"recon": nhwc(recon), "ssim_skimage": ssim_ref.mean(1),
                 "loss_ssim": loss.detach(), "loss_l2": ((x - recon) ** 2).mean().detach(),
                 "map_ssim": ssim_map, "map_l2": l2_map, "map_ssim_smoothed": ssim_smooth,
                 "score_ssim": ssim_smooth.max(axis=(1, 2)), "map_l2_smoothed": l2_smooth,
                 "score_l2": l2_smooth.max(axis=(1, 2)), **updates},
        grads=grads, stepped=stepped)


if __name__ == "__main__":
    main()
