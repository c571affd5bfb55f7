"""GANomaly parity fixture from the authors' code.

Reference: samet-akcay/ganomaly@78da4ea9a99f5b02ab60dd651a18def929176d77, ``lib/model.py``
(``Ganomaly``: ``optimize_params``, ``test``) and ``lib/networks.py`` (``NetG``, ``NetD``,
``weights_init``), run unchanged: the script builds their ``Ganomaly`` object with their
``Options`` parser (CPU, no visdom), takes ONE ``optimize_params()`` step on a fixed batch and
scores a fixed test batch with their ``test()``.

Reduced sizes: 32 x 32 images, ``ngf = ndf = 8``, ``nz = 16``, batch 4 (the authors' defaults
are 32 px, 64, 100, 64; the full-width tree at 32 px is in ``ganomaly_tree.json``). Optimiser:
theirs (Adam lr 2e-4, betas (0.5, 0.999)).

Recorded: the initial weights (and BatchNorm running statistics), the generator's forward
``(x_hat, z, z_hat)`` and the discriminator's ``(sigmoid D(x), f(x))`` in training mode, the three
generator loss terms, ``err_g`` and ``err_d``, the gradients of ``err_g`` (generator) and
``err_d`` (discriminator) left by their step, the state after the step, and ``test()``'s raw
latent codes, reconstruction and min-max scaled scores of a test batch (batch statistics:
they never call ``eval()``).

Run: ``/tmp/venv-ref/bin/python experiments/parity/ganomaly.py --reference-root /tmp/refs``
(``/tmp/refs/ganomaly`` holds ``git archive`` of that commit).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile

import numpy as np
import torch
from common import gradients, nhwc, save_fixture, save_parameter_tree, seed_everything, state

REFERENCE = ("samet-akcay/ganomaly@78da4ea9a99f5b02ab60dd651a18def929176d77 "
             "lib/model.py Ganomaly, lib/networks.py")
SIZE, WIDTH, LATENT, BATCH = 32, 8, 16, 4


def build(root: str, width: int, latent: int, out: str):
    """Their ``Ganomaly`` model (their options, CPU) and its options."""
    sys.path.insert(0, f"{root}/ganomaly")
    from lib.model import Ganomaly
    from options import Options

    opt = Options().parser.parse_args([
        "--isize", str(SIZE), "--ngf", str(width), "--ndf", str(width), "--nz", str(latent),
        "--batchsize", str(BATCH), "--device", "cpu", "--outf", out, "--name", "parity"])
    opt.isTrain = True
    return Ganomaly(opt, dataloader=None), opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-root", default="/tmp/refs")
    args = parser.parse_args()
    seed_everything(0)
    out = tempfile.mkdtemp()
    model, _ = build(args.reference_root, WIDTH, LATENT, out)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(BATCH, 3, SIZE, SIZE)).astype(np.float32)  # [0, 1], NCHW
    test_images = rng.uniform(size=(BATCH, 3, SIZE, SIZE)).astype(np.float32)
    x = torch.from_numpy(images) * 2 - 1  # the [-1, 1] range their Normalize((.5,), (.5,)) gives

    # Copies: ``state`` shares memory with the parameters, which the step changes in place.
    weights = {**{f"netg.{k}": v for k, v in state(copy.deepcopy(model.netg)).items()},
               **{f"netd.{k}": v for k, v in state(copy.deepcopy(model.netd)).items()}}
    # Forward passes on copies (training mode updates the running statistics).
    with torch.no_grad():
        fake, z, z_hat = copy.deepcopy(model.netg)(x)
        pred_real, feat_real = copy.deepcopy(model.netd)(x)

    model.input = x.clone()
    model.optimize_params()
    grads = {**{f"netg.{k}": v for k, v in gradients(model.netg.named_parameters()).items()},
             **{f"netd.{k}": v for k, v in gradients(model.netd.named_parameters()).items()}}
    stepped = {**{f"netg.{k}": v for k, v in state(copy.deepcopy(model.netg)).items()},
               **{f"netd.{k}": v for k, v in state(copy.deepcopy(model.netd)).items()}}

    # Their test(): the generator in training mode (batch statistics), scores min-max scaled.
    test_set = torch.utils.data.TensorDataset(torch.from_numpy(test_images) * 2 - 1,
                                              torch.tensor([0, 0, 1, 1]))
    model.dataloader = {"test": torch.utils.data.DataLoader(test_set, batch_size=BATCH)}
    model.test()

    save_fixture(
        "ganomaly", REFERENCE, weights=weights,
        inputs={"images": nhwc(torch.from_numpy(images)),
                "test_images": nhwc(torch.from_numpy(test_images))},
        outputs={"x_hat": nhwc(fake), "z": z.flatten(1), "z_hat": z_hat.flatten(1),
                 "d_prob": pred_real, "d_features": nhwc(feat_real),
                 "loss_adv": model.err_g_adv, "loss_con": model.err_g_con,
                 "loss_enc": model.err_g_enc, "loss_g": model.err_g, "loss_d": model.err_d,
                 "test_x_hat": nhwc(model.fake), "test_z": model.latent_i,
                 "test_z_hat": model.latent_o, "test_scores_scaled": model.an_scores},
        grads=grads, stepped=stepped)
    full, _ = build(args.reference_root, 64, 100, out)  # the authors' widths
    save_parameter_tree("ganomaly", REFERENCE,
                        torch.nn.ModuleDict({"netg": full.netg, "netd": full.netd}))


if __name__ == "__main__":
    main()
