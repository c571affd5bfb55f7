"""``vae`` against an independent PyTorch implementation of the VAE's equations (no single
authors' code; ``experiments/parity/vae.py``): forward, ELBO terms, loss with the fixture's
reparameterisation noise, gradients, the Adam update, maps and scores of both map types."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import pytest
from conv_ae_parity import check_maps, check_training_step, load_case

from anomjax.methods.reconstruction import VAE
from anomjax.methods.reconstruction.vae import negative_elbo, vae_network

METHOD = VAE(width=8, latent=16, sigma_side=0)  # the fixture's reduced widths; default optimiser
SCALE = {("log_scale",): "log_scale"}


@pytest.fixture(scope="module")
def case():
    return load_case(METHOD, SCALE)


def test_forward(case):
    fx, images, _, state = case
    net = vae_network("vae", 8, 16, images)
    fx.close("forward (z = mu)", net.apply(state, images), fx.output("recon"))


def test_loss_gradients_and_adam_update(case):
    """With the reference's noise: the loss our ``VAE.loss`` computes (``negative_elbo``),
    its gradients and the update of ``VAE.optimizer`` (the train step draws its own noise)."""
    fx, images, template, state = case
    net, noise = vae_network("vae", 8, 16, images), jnp.asarray(fx.input("noise"))
    loss, aux = negative_elbo(net, state["params"], images, None, noise)
    fx.close("loss", loss, fx.output("loss"))
    fx.close("log-likelihood", aux["log_likelihood"], fx.output("log_likelihood"))
    fx.close("kl", aux["kl"], fx.output("kl"))
    check_training_step(fx, METHOD, state["params"], images, template, SCALE,
                        loss=lambda p: negative_elbo(net, p, images, None, noise)[0])


@pytest.mark.parametrize("map_type", ["reconstruction", "gradient"])
def test_maps_and_scores(case, map_type):
    fx, images, _, state = case
    check_maps(fx, dataclasses.replace(METHOD, map_type=map_type), state, images, map_type)
