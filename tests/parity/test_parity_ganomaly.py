"""GANomaly against the authors' code (samet-akcay/ganomaly, ``experiments/parity/ganomaly.py``):
networks, the three generator loss terms and the discriminator loss, their gradients, one
training step of our grouped step (generator then discriminator, Adam lr 2e-4, betas
(0.5, 0.999)), and the scores of their ``test()`` (batch statistics: our
``test_statistics="batch"`` option); the discriminator's re-initialisation and the default
``"running"`` statistics as behaviour."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity_dcgan import (
    decoder_keys,
    deconv_as_conv,
    discriminator_keys,
    encoder_keys,
    from_reference,
    lookup,
    update,
)
from parity_harness import GRADIENT_TOL, Fixture, parameter_tree

from anomjax.backbones.convert import torch_to_flax
from anomjax.methods.generative import GANomaly
from anomjax.methods.generative.ganomaly import GANomalyGenerator, discriminate
from anomjax.methods.images import to_signed
from anomjax.train.state import init_train_state, method_state
from anomjax.train.step import make_train_step

SIZE, WIDTH, LATENT = 32, 8, 16


def _keys(size: int, width: int, latent: int) -> dict[tuple[str, ...], str]:
    return {**encoder_keys(("generator", "encoder1"), "netg.encoder1.main", size, width),
            **decoder_keys(("generator", "decoder"), "netg.decoder.main", size, width, latent),
            **encoder_keys(("generator", "encoder2"), "netg.encoder2.main", size, width),
            **discriminator_keys(("discriminator",), "netd", size)}


@pytest.fixture(scope="module")
def setup():
    fx = Fixture("ganomaly")
    method = GANomaly(width=WIDTH, latent=LATENT)
    images = jnp.asarray(fx.input("images"))
    template = method.init(jax.random.key(0), images)
    variables = from_reference(fx, "weights", template, _keys(SIZE, WIDTH, LATENT))
    return fx, method, images, template, variables


def test_networks_match_the_authors(setup):
    fx, method, images, _, variables = setup
    gen = GANomalyGenerator(SIZE, WIDTH, LATENT)
    (x_hat, z, z_hat), _ = gen.apply(
        {"params": variables["params"]["generator"],
         "batch_stats": variables["batch_stats"]["generator"]},
        to_signed(images), train=True, mutable=["batch_stats"])
    fx.close("generator x_hat", x_hat, fx.output("x_hat"))
    fx.close("generator z, z_hat", (z, z_hat), (fx.output("z"), fx.output("z_hat")))
    _, disc = method._nets(images)
    (logit, features), _ = discriminate(disc, variables["params"]["discriminator"],
                                        variables["batch_stats"]["discriminator"],
                                        to_signed(images))
    fx.close("discriminator sigmoid(D(x))", jax.nn.sigmoid(logit), fx.output("d_prob"))
    fx.close("discriminator features", features, fx.output("d_features"))


def test_losses_and_gradients_match_the_authors(setup):
    fx, method, images, _, variables = setup
    params, key = variables["params"], jax.random.key(0)

    def g_loss(group):
        return method.generator_loss({**params, "generator": group}, variables, images, key)

    (loss_g, aux), grad_g = jax.value_and_grad(g_loss, has_aux=True)(params["generator"])
    for term in ("loss_adv", "loss_con", "loss_enc"):
        fx.close(f"generator {term}", aux[term], fx.output(term))
    fx.close("generator loss", loss_g, fx.output("loss_g"))
    handed = {**variables, "carry": {"fake": aux["carry"]["fake"]}}

    def d_loss(group):
        return method.discriminator_loss({**params, "discriminator": group}, handed, images,
                                         key)[0]

    loss_d, grad_d = jax.value_and_grad(d_loss)(params["discriminator"])
    fx.close("discriminator loss", loss_d, fx.output("loss_d"))
    ours = {"params": {"generator": grad_g, "discriminator": grad_d}}
    ref = from_reference(fx, "grads", {"params": params}, _keys(SIZE, WIDTH, LATENT))
    fx.close("gradients (G of L_G, D of L_D)", ours, ref, GRADIENT_TOL)


def _one_step(method, variables, images):
    """Our jitted grouped train step from ``variables``: ``(method state, metrics)``."""
    opt = method.optimizer(1)
    ts = init_train_state(jax.tree.map(jnp.array, variables), opt, jax.random.key(0))
    ts, metrics = make_train_step(method, opt)(ts, images, jax.random.key(1))
    return method_state(ts), metrics


@pytest.fixture(scope="module")
def stepped(setup):
    """One default step (``reinit_below=1e-5`` does not fire: ``loss_d`` is about 0.7)."""
    _, method, images, _, variables = setup
    return _one_step(method, variables, images)


def test_one_train_step_and_scores_match_the_authors(setup, stepped):
    fx, method, _, template, variables = setup
    state, metrics = stepped
    fx.close("train step loss_g, loss_d", (metrics["loss_g"], metrics["loss_d"]),
             (fx.output("loss_g"), fx.output("loss_d")))
    ref = from_reference(fx, "stepped", template, _keys(SIZE, WIDTH, LATENT))
    fx.close("params after one step (Adam)", state["params"], ref["params"], GRADIENT_TOL)
    fx.close("one-step update (after - before)", update(state["params"], variables["params"]),
             update(ref["params"], variables["params"]), GRADIENT_TOL)
    means = [jax.tree.map(lambda s: s["mean"], t, is_leaf=lambda s: "mean" in s)
             for t in (state["batch_stats"], ref["batch_stats"])]
    fx.close("BatchNorm running means after one step", *means)

    test = jnp.asarray(fx.input("test_images"))
    authors = dataclasses.replace(method, sigma=0.0, test_statistics="batch")
    scores = jax.jit(authors.score)(state, test)
    image = np.asarray(scores.image)
    scaled = (image - image.min()) / (image.max() - image.min())
    fx.close("test() scores, min-max scaled (batch statistics)", scaled,
             fx.output("test_scores_scaled"))
    latent = np.mean((fx.output("test_z") - fx.output("test_z_hat")) ** 2, axis=1)
    fx.close("image score = mean (z - z_hat)^2 of their test() codes", image, latent)
    residual = np.mean(np.abs(2 * fx.input("test_images") - 1 - fx.output("test_x_hat")), -1) / 2
    fx.close("map (library addition): residual of their x_hat", scores.maps, residual)


def test_a_collapsed_discriminator_is_drawn_again(setup, stepped):
    """The authors re-draw D when ``err_d < 1e-5``: with the threshold above the loss the step
    leaves fresh DCGAN weights instead of the Adam-stepped ones, and only in D."""
    _, method, images, _, variables = setup
    kept = stepped[0]["params"]
    redrawn, _ = _one_step(dataclasses.replace(method, reinit_below=1e3), variables, images)
    d_new = redrawn["params"]["discriminator"]
    kernel = np.asarray(d_new["body"]["conv1"]["kernel"])
    adam = np.asarray(kept["discriminator"]["body"]["conv1"]["kernel"])
    assert np.max(np.abs(kernel - adam)) > 1e-2
    assert abs(kernel.std() - 0.02) < 0.004 and abs(kernel.mean()) < 0.004
    norm = d_new["body"]["norm1"]
    assert abs(np.mean(norm["scale"]) - 1.0) < 0.02 and np.all(np.asarray(norm["bias"]) == 0)
    same = jax.tree.map(np.array_equal, redrawn["params"]["generator"], kept["generator"])
    assert all(jax.tree.leaves(same))


def test_running_statistics_option_scores_each_image_on_its_own(setup):
    fx, method, images, _, variables = setup
    test = jnp.asarray(fx.input("test_images"))
    for mode, independent in (("running", True), ("batch", False)):
        score = jax.jit(dataclasses.replace(method, test_statistics=mode).score)
        alone = np.asarray(score(variables, test[:2]).image)
        batch = np.asarray(score(variables, test).image)[:2]
        assert np.allclose(alone, batch, rtol=1e-5) == independent, mode


def test_full_width_parameter_tree_matches_the_authors():
    tree = parameter_tree("ganomaly")
    method = GANomaly()
    template = method.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    shapes = {name: np.zeros(shape, np.float32) for name, shape in tree["shapes"].items()}
    # Raises on any missing, unused or mis-shaped tensor.
    filled = torch_to_flax(template, deconv_as_conv(shapes), lookup(_keys(32, 64, 100)),
                           "ganomaly_tree.json")
    count = sum(x.size for x in jax.tree.leaves(filled["params"]))
    assert count == tree["parameter_count"]
