"""f-AnoGAN parity fixture: the authors' equations and optimiser settings in plain PyTorch.

The authors' code, tSchlegl/f-AnoGAN@35b1de9b74764e2843807ed4087528ce265f4d24
(``wgangp_64x64.py``, ``z_encoding_izif.py``, ``anomaly_detection.py``), is Python 2.7 with
TensorFlow 1.2 and cannot run here; so this script is an UNOFFICIAL reference: it writes
their equations with their hyper-parameters, read from their code, on DCGAN networks (the
``Encoder`` / ``Decoder`` of samet-akcay/ganomaly@78da4ea ``lib/networks.py``, public DCGAN
code independent of anomjax; the critic's BatchNorm layers replaced by ``GroupNorm(1, C)``,
which is their ``Layernorm([1, 2, 3])``: statistics over ``(C, H, W)``, per-channel scale and
offset, epsilon 1e-5). Their residual 64 x 64 networks are not ported (see the method's
docstring). What is taken from their code:

* phase 1 (``wgangp_64x64.py``): ``z ~ N(0, I)`` (``RAND_SAMPLING='normal'``), critic cost
  ``mean D(G(z)) - mean D(x) + 10 mean (||grad D(x + a (G(z) - x))|| - 1)^2`` with
  ``a ~ U[0, 1]`` per sample, generator cost ``-mean D(G(z))``, both ``AdamOptimizer(1e-4,
  beta1=0, beta2=0.9)``; ``G`` in training mode, its BatchNorm moving averages updated by the
  generator's step only (``update_ops_gen``);
* phase 2 (``z_encoding_izif.py``): ``z = tanh(E(x))`` (``Z_REG_TYPE='tanh_fc'``), ``E`` with
  BatchNorm in training mode, ``G`` (moving averages) and ``D`` frozen, loss
  ``MSE(x, G(z)) + kappa MSE(f(G(z)), f(x))``, kappa 1, ``RMSPropOptimizer(5e-5)`` (TensorFlow
  1 defaults: decay 0.9, momentum 0, epsilon 1e-10, mean square initialised to ones; written
  out below, PyTorch's RMSprop differs);
* score (``anomaly_detection.py``): per image ``MSE(x, G(E(x))) + kappa MSE(f(.), f(x))``,
  ``E`` and ``G`` in inference mode.

Every random draw (``z``, ``a``) is stored and fed to our objectives. Adam here is PyTorch's
(TensorFlow's epsilon placement differs only for gradients near 1e-8). Reduced sizes: 32 x 32
RGB images, width 8, latent 16, batch 4.

Run: ``/tmp/venv-ref/bin/python experiments/parity/f_anogan.py --reference-root /tmp/refs``.
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch
from common import gradients, nhwc, save_fixture, seed_everything, state

REFERENCE = ("numpy/torch port of tSchlegl/f-AnoGAN@35b1de9 equations (wgangp_64x64.py, "
             "z_encoding_izif.py, anomaly_detection.py) on ganomaly@78da4ea DCGAN nets")
SIZE, WIDTH, LATENT, BATCH = 32, 8, 16, 4
GP_WEIGHT, KAPPA, GAN_LR, ENCODER_LR = 10.0, 1.0, 1e-4, 5e-5


def build(root: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """``(G, D, E)``: DCGAN decoder, critic (LayerNorm), encoder (BatchNorm); random affine
    parameters so that a mis-mapped tensor shows."""
    sys.path.insert(0, f"{root}/ganomaly")
    from lib.networks import Decoder, Encoder, weights_init

    gen = Decoder(SIZE, LATENT, 3, WIDTH, 1)
    critic = Encoder(SIZE, 1, 3, WIDTH, 1)
    for name, module in list(critic.main.named_children()):
        if isinstance(module, torch.nn.BatchNorm2d):
            setattr(critic.main, name, torch.nn.GroupNorm(1, module.num_features, eps=1e-5))
    enc = Encoder(SIZE, LATENT, 3, WIDTH, 1)
    for net in (gen, critic, enc):
        net.apply(weights_init)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.GroupNorm):
                torch.nn.init.normal_(module.weight, 1.0, 0.1)
                torch.nn.init.normal_(module.bias, 0.0, 0.1)
    return gen, critic, enc


def critic_out(critic: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D(x) [B], f(x) [B, C, 4, 4])``: the last convolution and its input."""
    layers = list(critic.main.children())
    features = torch.nn.Sequential(*layers[:-1])(x)
    return layers[-1](features).flatten(), features


def tf1_rmsprop_step(params: list[torch.nn.Parameter], lr: float) -> None:
    """One step of TensorFlow 1's RMSPropOptimizer from a fresh state (``ms`` = ones)."""
    with torch.no_grad():
        for p in params:
            ms = 0.9 * torch.ones_like(p) + 0.1 * p.grad ** 2
            p -= lr * p.grad / torch.sqrt(ms + 1e-10)


def code(z: np.ndarray) -> torch.Tensor:
    """``[B, latent]`` -> the ``[B, latent, 1, 1]`` input of their ``Decoder``."""
    return torch.from_numpy(z)[:, :, None, None]


def copied(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies (``gradients`` shares memory with ``.grad``, which later backward passes add
    to in place)."""
    return {k: v.copy() for k, v in arrays.items()}


def prefixed(**groups: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{g}.{k}": v for g, values in groups.items() for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-root", default="/tmp/refs")
    args = parser.parse_args()
    seed_everything(0)
    gen, critic, enc = build(args.reference_root)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(BATCH, 3, SIZE, SIZE)).astype(np.float32)
    test_images = rng.uniform(size=(BATCH, 3, SIZE, SIZE)).astype(np.float32)
    z_critic = rng.normal(size=(BATCH, LATENT)).astype(np.float32)
    alpha = rng.uniform(size=(BATCH,)).astype(np.float32)
    z_gen = rng.normal(size=(BATCH, LATENT)).astype(np.float32)
    x = torch.from_numpy(images) * 2 - 1
    weights = prefixed(gen=state(copy.deepcopy(gen)), critic=state(copy.deepcopy(critic)),
                       enc=state(copy.deepcopy(enc)))

    # Phase 1, critic step: G samples in training mode, its moving averages untouched.
    fake = copy.deepcopy(gen).train()(code(z_critic)).detach()
    a = torch.from_numpy(alpha).view(-1, 1, 1, 1)
    interp = (x + a * (fake - x)).requires_grad_(True)
    slopes = torch.autograd.grad(critic_out(critic, interp)[0].sum(), interp,
                                 create_graph=True)[0].flatten(1).norm(dim=1)
    penalty = torch.mean((slopes - 1) ** 2)
    wasserstein = critic_out(critic, x)[0].mean() - critic_out(critic, fake)[0].mean()
    critic_cost = -wasserstein + GP_WEIGHT * penalty
    critic_cost.backward()
    grads_critic = copied(gradients(critic.named_parameters()))
    torch.optim.Adam(critic.parameters(), lr=GAN_LR, betas=(0.0, 0.9)).step()
    stepped_critic = state(copy.deepcopy(critic))

    # Phase 1, generator step (on the stepped critic; G's moving averages move).
    critic.zero_grad()
    gen.train()
    gen_cost = -critic_out(critic, gen(code(z_gen)))[0].mean()
    gen_cost.backward()
    grads_gen = copied(gradients(gen.named_parameters()))
    torch.optim.Adam(gen.parameters(), lr=GAN_LR, betas=(0.0, 0.9)).step()
    stepped_gen = state(copy.deepcopy(gen))

    # Phase 2, one encoder step against the frozen (stepped) G and D.
    gen.eval()
    critic.zero_grad()
    enc.train()
    recon = gen(torch.tanh(enc(x)))
    feat_real, feat_fake = critic_out(critic, x)[1], critic_out(critic, recon)[1]
    residual = torch.mean((x - recon) ** 2)
    feature_residual = torch.mean((feat_fake - feat_real) ** 2)
    enc_cost = residual + KAPPA * feature_residual
    enc_cost.backward()
    grads_enc = copied(gradients(enc.named_parameters()))
    tf1_rmsprop_step(list(enc.parameters()), ENCODER_LR)
    stepped_enc = state(copy.deepcopy(enc))

    # Score of a test batch with the stepped networks in inference mode.
    enc.eval()
    with torch.no_grad():
        t = torch.from_numpy(test_images) * 2 - 1
        test_recon = gen(torch.tanh(enc(t)))
        score = (torch.mean((t - test_recon).flatten(1) ** 2, dim=1)
                 + KAPPA * torch.mean((critic_out(critic, test_recon)[1]
                                       - critic_out(critic, t)[1]).flatten(1) ** 2, dim=1))

    save_fixture(
        "f_anogan", REFERENCE, weights=weights,
        inputs={"images": nhwc(torch.from_numpy(images)),
                "test_images": nhwc(torch.from_numpy(test_images)),
                "z_critic": z_critic, "alpha": alpha, "z_gen": z_gen},
        outputs={"fake": nhwc(fake), "critic_cost": critic_cost, "wasserstein": wasserstein,
                 "gradient_penalty": penalty, "gen_cost": gen_cost, "enc_cost": enc_cost,
                 "residual": residual, "feature_residual": feature_residual,
                 "recon": nhwc(recon), "test_recon": nhwc(test_recon), "test_score": score},
        grads=prefixed(critic=grads_critic, gen=grads_gen, enc=grads_enc),
        stepped=prefixed(critic=stepped_critic, gen=stepped_gen, enc=stepped_enc))


if __name__ == "__main__":
    main()
