"""``dfr`` against the authors' code (YoungGod/DFR, ``experiments/parity/dfr.py``) on a
seeded ResNet-18 (the authors' VGG19 has no port here): regional features, the PCA latent
size, loss, gradients, the Adam update, one train step (parameters and PyTorch's BatchNorm
running statistics), maps and scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity_harness import GRADIENT_TOL, Fixture

from anomjax.backbones.registry import torch_state_dict_shapes, variables_from_state_dict
from anomjax.backbones.seeded_weights import seeded_state_dict
from anomjax.methods.reconstruction import DFR
from anomjax.methods.reconstruction.dfr import FeatureAutoencoder, pca_dimension
from anomjax.nn.teacher import teacher as get_teacher
from anomjax.train import init_train_state, make_train_step

METHOD = DFR(backbone="resnet18", taps=("layer1", "layer2"))  # authors' align_corners default
BACKBONE_SEED = 7  # experiments/parity/dfr.py
TORCH_NAMES = {"conv0": "encoder.0", "bn0": "encoder.1", "conv1": "encoder.3",
               "bn1": "encoder.4", "conv2": "encoder.6", "conv3": "decoder.0",
               "bn3": "decoder.1", "conv4": "decoder.3", "bn4": "decoder.4",
               "conv5": "decoder.6"}
# their biases reach a train-mode BatchNorm through linear layers only (conv2 through conv3)
BEFORE_BATCHNORM = ("conv0", "conv1", "conv2", "conv3", "conv4")


def torch_name(path: tuple[str, ...]) -> str:
    (module,) = path
    return TORCH_NAMES[module]


@pytest.fixture(scope="module")
def case():
    fx = Fixture("dfr")
    images = jnp.asarray(fx.input("images"))
    teacher = variables_from_state_dict(
        "resnet18", seeded_state_dict(torch_state_dict_shapes("resnet18"), BACKBONE_SEED))
    frozen = {"teacher": teacher}
    get_teacher("resnet18")  # build the architecture outside jit (random, no weights file)
    feats = jax.jit(METHOD.frozen_features)({"frozen": frozen}, images)
    latent = int(fx.output("pca_latent"))
    template = FeatureAutoencoder(feats.shape[-1], latent).init(
        jax.random.key(0), feats[:1], train=False)
    variables = fx.variables(template, torch_name)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "frozen": frozen}
    return fx, images, feats, template, state


def test_regional_features_and_pca_latent(case):
    fx, _, feats, _, _ = case
    fx.close("regional features", feats, fx.output("regional_features"))
    ours = pca_dimension(feats.reshape(-1, feats.shape[-1]), METHOD.variance_kept)
    assert ours == int(fx.output("pca_latent"))


def split_zero_gradients(tree: dict) -> tuple[dict, list[np.ndarray]]:
    """``tree`` without the biases of the convolutions followed by train-mode BatchNorm (their
    gradient is zero in exact arithmetic: the batch mean removes them), and those leaves."""
    rest = {k: v for k, v in tree.items() if k not in BEFORE_BATCHNORM}
    zero = [np.asarray(tree[k]["bias"]) for k in BEFORE_BATCHNORM]
    rest.update({k: {"kernel": tree[k]["kernel"]} for k in BEFORE_BATCHNORM})
    return rest, zero


def test_loss_gradients_and_one_train_step(case):
    """On the reference's regional features, given as the engine's cached features
    (``frozen=``): at initialisation the gradient of the first layers is a small difference
    of large terms, and our float32 features (within 6e-7 of the reference's) move it by up to
    1e-2; from the same features it agrees to 1e-6."""
    fx, images, _, template, state = case
    key = jax.random.key(1)
    feats = jnp.asarray(fx.output("regional_features"))
    loss, _ = METHOD.loss(state["params"], state, images, key, frozen=feats)
    fx.close("loss", loss, fx.output("loss"))
    grads = jax.grad(lambda p: METHOD.loss(p, state, images, key, frozen=feats)[0])(
        state["params"])
    params_only = {"params": template["params"]}
    ours, ours_zero = split_zero_gradients(grads)
    ref, ref_zero = split_zero_gradients(
        fx.variables(params_only, torch_name, "grads")["params"])
    fx.close("gradients", ours, ref, GRADIENT_TOL)
    scale = max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(ref))
    assert max(np.abs(g).max() for g in ours_zero + ref_zero) < 1e-6 * scale

    optimizer = METHOD.optimizer(1)
    updates, _ = optimizer.update(grads, optimizer.init(state["params"]), state["params"])
    ref_updates = fx.variables(params_only, torch_name, "outputs", "update/")["params"]
    # Adam's first update g / (|g| + 1e-8) turns from linear to +-1 within |g| ~ 1e-8, where a
    # float32 gradient's rounding (~1e-9 here) moves it by percents: compared where the
    # reference's |g| >= 1e-6 (the others: bounded by the step below)
    mask = jax.tree.map(lambda g: np.abs(g) >= 1e-6, ref)
    fx.close("optimiser update (|g| >= 1e-6)",
             jax.tree.map(np.multiply, split_zero_gradients(updates)[0], mask),
             jax.tree.map(np.multiply, split_zero_gradients(ref_updates)[0], mask),
             GRADIENT_TOL)

    train_state = init_train_state(jax.tree.map(jnp.array, state), optimizer, key)
    new, _ = make_train_step(METHOD, optimizer)(train_state, images, key, feats)
    stepped = fx.variables(template, torch_name, "stepped")
    fx.close("parameters after one train step", new.params, stepped["params"], GRADIENT_TOL)
    fx.close("batchnorm running statistics after the step", new.batch_stats,
             stepped["batch_stats"])


def test_maps_and_scores(case):
    """Of the stepped state (eval-mode BatchNorm with the updated running statistics)."""
    fx, images, _, template, state = case
    stepped = fx.variables(template, torch_name, "stepped")
    scores = METHOD.score({**state, **jax.tree.map(np.asarray, stepped)}, images)
    fx.close("map", scores.maps, fx.output("map"))
    fx.close("image score", scores.image, fx.output("score"))
