"""AnoGAN against an independent PyTorch implementation of the paper's equations (no authors'
code exists; ``experiments/parity/anogan.py``): the DCGAN discriminator and generator losses
with the reference's ``z``, their gradients, one Adam step of each (discriminator first, the
generator against the updated discriminator), the BatchNorm running means, and the latent
search (``A(z)``, ``G(z*)``) from the reference's starting codes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest
from parity_dcgan import decoder_keys, discriminator_keys, from_reference, update
from parity_harness import GRADIENT_TOL, Fixture

from anomjax.methods.generative import AnoGAN

SIZE, WIDTH, LATENT = 32, 8, 16
KEYS = {**decoder_keys(("generator",), "gen.main", SIZE, WIDTH, LATENT),
        **discriminator_keys(("discriminator",), "disc", SIZE)}


def _means(tree):
    return jax.tree.map(lambda s: s["mean"], tree, is_leaf=lambda s: "mean" in s)


@pytest.fixture(scope="module")
def setup():
    fx = Fixture("anogan")
    method = AnoGAN(width=WIDTH, latent=LATENT, search_steps=5)
    images = jnp.asarray(fx.input("images"))
    template = method.init(jax.random.key(0), images)
    return (fx, method, images, template, from_reference(fx, "weights", template, KEYS),
            from_reference(fx, "stepped", template, KEYS))


def _adam_step(opt: optax.GradientTransformation, params, grads):
    return optax.apply_updates(params, opt.update(grads, opt.init(params), params)[0])


def test_dcgan_losses_gradients_and_steps_match_the_reference(setup):
    fx, method, images, template, variables, stepped = setup
    params, optimizers = variables["params"], method.optimizer(1).optimizers
    ref_grads = from_reference(fx, "grads", {"params": template["params"]}, KEYS)["params"]
    z = jnp.asarray(fx.input("z"))
    gen, _ = method._nets(images)
    fake = gen.apply({"params": params["generator"],
                      "batch_stats": variables["batch_stats"]["generator"]}, z, train=True,
                     mutable=["batch_stats"])[0]
    fx.close("generator G(z)", fake, fx.output("fake"))

    def d_loss(group):
        return method.discriminator_objective({**params, "discriminator": group}, variables,
                                              images, z)

    (loss, aux), grads = jax.value_and_grad(d_loss, has_aux=True)(params["discriminator"])
    fx.close("discriminator loss", loss, fx.output("d_loss"))
    fx.close("discriminator gradient", grads, ref_grads["discriminator"], GRADIENT_TOL)
    new_d = _adam_step(optimizers["discriminator"], params["discriminator"], grads)
    fx.close("discriminator after one Adam(2e-4, 0.5) step", new_d,
             stepped["params"]["discriminator"], GRADIENT_TOL)
    fx.close("discriminator one-step update", update(new_d, params["discriminator"]),
             update(stepped["params"]["discriminator"], params["discriminator"]), GRADIENT_TOL)

    params = {**params, "discriminator": new_d}
    handed = {**variables, "batch_stats": aux["batch_stats"], "carry": aux["carry"]}

    def g_loss(group):
        return method.generator_loss({**params, "generator": group}, handed, images,
                                     jax.random.key(0))

    (loss, aux), grads = jax.value_and_grad(g_loss, has_aux=True)(params["generator"])
    fx.close("generator loss (non-saturating, same z)", loss, fx.output("g_loss"))
    fx.close("generator gradient", grads, ref_grads["generator"], GRADIENT_TOL)
    new_g = _adam_step(optimizers["generator"], params["generator"], grads)
    fx.close("generator after one Adam step", new_g, stepped["params"]["generator"],
             GRADIENT_TOL)
    fx.close("generator one-step update", update(new_g, params["generator"]),
             update(stepped["params"]["generator"], params["generator"]), GRADIENT_TOL)
    fx.close("BatchNorm running means after both updates", _means(aux["batch_stats"]),
             _means(stepped["batch_stats"]))


def test_latent_search_matches_the_reference(setup):
    fx, method, images, _, _, stepped = setup
    search = jax.jit(dataclasses.replace(method, sigma=0.0).search_from)
    recon, score = search(stepped, images, jnp.asarray(fx.input("z0")))
    fx.close("search: A(z*) after 5 Adam(0.05) steps", score, fx.output("search_score"))
    fx.close("search: G(z*)", recon, fx.output("search_recon"))
