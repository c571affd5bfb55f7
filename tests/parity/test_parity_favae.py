"""``favae`` against an independent PyTorch implementation of the equations its docstring
states (no authors' code; ``experiments/parity/favae.py``) on a seeded ResNet-18: loss with the
fixture's reparameterisation noise, gradients, the Adam update, both map terms, the
calibrated normalisers, the map and scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_ae_parity import check_training_step, conv_ae_params
from parity_harness import Fixture

from anomjax.backbones.registry import torch_state_dict_shapes, variables_from_state_dict
from anomjax.backbones.seeded_weights import seeded_state_dict
from anomjax.methods.reconstruction import FAVAE
from anomjax.nn.teacher import teacher
from anomjax.types import Batch

METHOD = FAVAE(sigma_side=0, backbone="resnet18", taps=("layer1", "layer2"), width=8, latent=16)
BACKBONE_SEED = 7  # experiments/parity/dfr.py, used by favae.py
SCALE = {("log_scale",): "log_scale"}


@pytest.fixture(scope="module")
def case():
    fx = Fixture("favae")
    images = jnp.asarray(fx.input("images"))
    teacher("resnet18")  # the architecture, built outside jit (random; weights set below)
    frozen = {"teacher": variables_from_state_dict(
        "resnet18", seeded_state_dict(torch_state_dict_shapes("resnet18"), BACKBONE_SEED))}
    template = METHOD._net(images).init(jax.random.key(0), images[:1])["params"]
    state = {"params": conv_ae_params(fx, template, extra=SCALE), "frozen": frozen,
             "normalizer": {"feature": jnp.ones(()), "gradient": jnp.ones(())}}
    return fx, images, template, state


def test_loss_gradients_and_adam_update(case):
    """With the reference's noise, through ``FAVAE._objective`` (what ``loss`` averages)."""
    fx, images, template, state = case
    noise = jnp.asarray(fx.input("noise"))

    def loss(params):
        return jnp.mean(METHOD._objective(params, state, images, None, noise)[0])

    fx.close("loss", loss(state["params"]), fx.output("loss"))
    check_training_step(fx, METHOD, state["params"], images, template, SCALE, loss=loss)


def test_maps_normalisers_and_scores(case):
    fx, images, _, state = case
    feature, gradient = METHOD._maps(state, images)
    fx.close("feature-error map", feature, fx.output("feature_map"))
    fx.close("gradient map", gradient, fx.output("gradient_map"))
    n = len(images)
    batch = Batch(np.asarray(images), np.zeros(n, np.int32), np.zeros((n, 32, 32), np.uint8),
                  ("a", "b"), ("good", "good"))
    calibrated = METHOD.calibrate(state, [batch])
    fx.close("normaliser (feature)", calibrated["normalizer"]["feature"],
             fx.output("normalizer_feature"))
    fx.close("normaliser (gradient)", calibrated["normalizer"]["gradient"],
             fx.output("normalizer_gradient"))
    scores = METHOD.score(calibrated, images)
    fx.close("map", scores.maps, fx.output("map"))
    fx.close("image score", scores.image, fx.output("score"))
