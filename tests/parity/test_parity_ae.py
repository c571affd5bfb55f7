"""``ae`` against an independent PyTorch implementation of Bergmann et al. (no public authors'
code; ``experiments/parity/ae.py``, SSIM pinned to scikit-image): forward, SSIM, losses,
gradients, one Adam step through our train step, maps and scores."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from conv_ae_parity import check_maps, check_parameter_tree, check_training_step, load_case

from anomjax.methods.reconstruction import AE
from anomjax.methods.reconstruction.autoencoder import Autoencoder, bergmann_layers
from anomjax.nn.losses import ssim_map

METHOD = AE(width=8, latent=16, sigma_side=0)  # the fixture's reduced widths, paper's loss


@pytest.fixture(scope="module")
def case():
    return load_case(METHOD)


def test_forward_and_ssim(case):
    fx, images, _, state = case
    recon = Autoencoder(bergmann_layers(8), 16).apply(state, images)
    fx.close("forward", recon, fx.output("recon"))
    ref_recon = jnp.asarray(fx.output("recon"))
    fx.close("ssim map (scikit-image)", ssim_map(images, ref_recon), fx.output("ssim_skimage"))


def test_losses_gradients_and_one_adam_step(case):
    fx, images, template, state = case
    key = jax.random.key(1)
    fx.close("loss (ssim)", METHOD.loss(state["params"], state, images, key)[0],
             fx.output("loss_ssim"))
    l2 = dataclasses.replace(METHOD, loss_type="l2")
    fx.close("loss (l2)", l2.loss(state["params"], state, images, key)[0], fx.output("loss_l2"))
    check_training_step(fx, METHOD, state["params"], images, template)


@pytest.mark.parametrize("loss_type", ["ssim", "l2"])
def test_maps_and_scores(case, loss_type):
    fx, images, _, state = case
    check_maps(fx, dataclasses.replace(METHOD, loss_type=loss_type), state, images, loss_type)


def test_full_width_parameter_tree():
    """The default (paper's widths, latent 100) at 128 px: names, shapes and count."""
    template = AE().init(jax.random.key(0), jnp.zeros((1, 128, 128, 3)))["params"]
    check_parameter_tree("ae", template)
