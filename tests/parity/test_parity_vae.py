"""``vae`` against an independent PyTorch implementation of the VAE's equations (no single
authors' code; ``experiments/parity/vae.py``): forward, ELBO terms, loss with the fixture's
reparameterisation noise, gradients, the Adam update, maps and scores of both map types."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from conv_ae_parity import check_training_step, conv_ae_params
from parity_harness import Fixture

from anomjax.methods.reconstruction import VAE
from anomjax.methods.reconstruction.vae import negative_elbo, vae_network

METHOD = VAE(width=8, latent=16)  # the fixture's reduced widths; default optimiser
SCALE = {("log_scale",): "log_scale"}


@pytest.fixture(scope="module")
def case():
    fx = Fixture("vae")
    images = jnp.asarray(fx.input("images"))
    template = METHOD.init(jax.random.key(0), images)["params"]
    return fx, images, template, {"params": conv_ae_params(fx, template, extra=SCALE)}


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
    method = dataclasses.replace(METHOD, map_type=map_type)
    raw = dataclasses.replace(method, sigma=0.0).score(state, images)
    fx.close(f"map ({map_type})", raw.maps, fx.output(f"map_{map_type}"))
    scores = method.score(state, images)
    fx.close(f"smoothed map ({map_type})", scores.maps, fx.output(f"map_{map_type}_smoothed"))
    fx.close(f"image score ({map_type})", scores.image, fx.output(f"score_{map_type}"))
