"""``memae`` against the authors' memory module, entropy loss and optimiser
(donggong1/memae-anomaly-detection, ``experiments/parity/memae.py``) around an independent
PyTorch Bergmann encoder/decoder: forward, addressing, loss terms, gradients, one Adam step
through our train step, maps and scores, at the default threshold ``1 / slots``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conv_ae_parity import check_maps, check_parameter_tree, check_training_step, load_case

from anomjax.methods.reconstruction import MemAE
from anomjax.methods.reconstruction.autoencoder import bergmann_layers
from anomjax.methods.reconstruction.memae import MemoryAutoencoder

METHOD = MemAE(width=8, slots=20, sigma_side=0)  # default shrink: the paper's rule, 1 / 20
MEMORY = {("memory", "memory"): "memory.memory.weight"}


@pytest.fixture(scope="module")
def case():
    return load_case(METHOD, MEMORY)


def test_forward_and_addressing(case):
    fx, images, _, state = case
    net = MemoryAutoencoder(bergmann_layers(8), 20, METHOD.threshold, "dot")
    recon, w = net.apply(state, images)
    fx.close("forward", recon, fx.output("recon"))
    fx.close("addressing weights", w, fx.output("addressing"))


def test_loss_gradients_and_one_adam_step(case):
    fx, images, template, state = case
    loss, aux = METHOD.loss(state["params"], state, images, jax.random.key(1))
    fx.close("loss", loss, fx.output("loss"))
    fx.close("mse", aux["mse"], fx.output("mse"))
    fx.close("entropy", aux["entropy"], fx.output("entropy"))
    check_training_step(fx, METHOD, state["params"], images, template, MEMORY)


def test_maps_and_scores(case):
    fx, images, _, state = case
    check_maps(fx, METHOD, state, images)


def test_full_width_parameter_tree():
    """The default (paper's widths, 100 slots) at 128 px: names, shapes and count."""
    template = MemAE().init(jax.random.key(0), jnp.zeros((1, 128, 128, 3)))["params"]
    check_parameter_tree("memae", template, MEMORY)
