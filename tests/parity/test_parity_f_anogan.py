"""f-AnoGAN against the authors' equations and settings (tSchlegl/f-AnoGAN is TensorFlow 1.2 /
Python 2.7 and cannot run; ``experiments/parity/f_anogan.py`` writes their equations in
PyTorch, an unofficial reference): the WGAN-GP critic and generator objectives with the
reference's draws, their gradients and Adam steps, the izi_f encoder step of our real train
step (TensorFlow 1 RMSProp) with the generator and critic frozen, the score; and a resume that
would move the GAN/encoder boundary refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from parity_dcgan import decoder_keys, encoder_keys, from_reference, update
from parity_harness import GRADIENT_TOL, Fixture

from anomjax.methods.generative import FAnoGAN
from anomjax.train.state import init_train_state, method_state
from anomjax.train.step import make_train_step

SIZE, WIDTH, LATENT = 32, 8, 16
KEYS = {**decoder_keys(("generator",), "gen.main", SIZE, WIDTH, LATENT),
        **encoder_keys(("critic", "body"), "critic.main", SIZE, WIDTH),
        **encoder_keys(("encoder", "body"), "enc.main", SIZE, WIDTH)}


def _only(tree: dict, leaf: str) -> dict:
    """The ``mean`` (or ``var``) leaves of a ``batch_stats`` tree."""
    return jax.tree.map(lambda s: s[leaf], tree, is_leaf=lambda s: leaf in s)


@pytest.fixture(scope="module")
def setup():
    fx = Fixture("f_anogan")
    method = FAnoGAN(width=WIDTH, latent=LATENT)
    images = jnp.asarray(fx.input("images"))
    template = method.init(jax.random.key(0), images)
    return (fx, method, images, template, from_reference(fx, "weights", template, KEYS),
            from_reference(fx, "stepped", template, KEYS))


@pytest.fixture(scope="module")
def run_step(setup):
    """``(variables, step) -> (method state, metrics)``: our jitted grouped train step of a
    10-step run (boundary 5), compiled once."""
    method = setup[1]
    opt = method.optimizer(10)
    train_step = make_train_step(method, opt)

    def run(variables, step: int):
        ts = init_train_state(jax.tree.map(jnp.array, variables), opt, jax.random.key(0))
        ts, metrics = train_step(ts.replace(step=jnp.asarray(step, jnp.int32)), setup[2],
                                 jax.random.key(1))
        return method_state(ts), metrics

    return run


def _step(opt: optax.GradientTransformation, params, grads):
    return optax.apply_updates(params, opt.update(grads, opt.init(params), params)[0])


def test_wgan_gp_phase_matches_the_authors_equations(setup):
    fx, method, images, template, variables, stepped = setup
    params, optimizers = variables["params"], method.optimizer(10).optimizers
    ref_grads = from_reference(fx, "grads", {"params": template["params"]}, KEYS)["params"]
    z, eps = jnp.asarray(fx.input("z_critic")), 1.0 - jnp.asarray(fx.input("alpha"))

    def critic(group):
        return method.critic_objective({**params, "critic": group}, variables, images, z, eps)

    (loss, aux), grads = jax.value_and_grad(critic, has_aux=True)(params["critic"])
    fx.close("critic cost (Wasserstein, penalty)", (loss, aux["wasserstein"],
             aux["gradient_penalty"]), (fx.output("critic_cost"), fx.output("wasserstein"),
                                        fx.output("gradient_penalty")))
    fx.close("critic gradient", grads, ref_grads["critic"], GRADIENT_TOL)
    new_critic = _step(optimizers["critic"], params["critic"], grads)
    fx.close("critic after one Adam(1e-4, 0, 0.9) step", new_critic,
             stepped["params"]["critic"], GRADIENT_TOL)
    fx.close("critic one-step update", update(new_critic, params["critic"]),
             update(stepped["params"]["critic"], params["critic"]), GRADIENT_TOL)

    params = {**params, "critic": stepped["params"]["critic"]}

    def generator(group):
        return method.generator_objective({**params, "generator": group}, variables, images,
                                          jnp.asarray(fx.input("z_gen")))

    (loss, aux), grads = jax.value_and_grad(generator, has_aux=True)(params["generator"])
    fx.close("generator cost", loss, fx.output("gen_cost"))
    fx.close("generator gradient", grads, ref_grads["generator"], GRADIENT_TOL)
    new_gen = _step(optimizers["generator"], params["generator"], grads)
    fx.close("generator after one Adam step", new_gen, stepped["params"]["generator"],
             GRADIENT_TOL)
    fx.close("generator one-step update", update(new_gen, params["generator"]),
             update(stepped["params"]["generator"], params["generator"]), GRADIENT_TOL)
    fx.close("generator BatchNorm running means after its step",
             _only(aux["batch_stats"]["generator"], "mean"),
             _only(stepped["batch_stats"]["generator"], "mean"))


def test_a_critic_step_leaves_the_generator_and_its_statistics_alone(setup, run_step):
    """The authors update G's moving averages in G's steps only: a critic-only step (step 0,
    the generator runs every 5th) changes the critic and nothing of G."""
    variables = setup[4]
    state, _ = run_step(variables, 0)
    assert not np.allclose(state["params"]["critic"]["body"]["conv1"]["kernel"],
                           variables["params"]["critic"]["body"]["conv1"]["kernel"])
    for group in ("params", "batch_stats"):
        same = jax.tree.map(np.array_equal, state[group]["generator"],
                            variables[group]["generator"])
        assert all(jax.tree.leaves(same)), group


def test_encoder_phase_and_score_match_the_authors_with_g_and_d_frozen(setup, run_step):
    fx, method, images, template, variables, stepped = setup
    # Phase 2 starts from the GAN the reference stepped; the encoder from its initial weights.
    start = {"params": {**stepped["params"], "encoder": variables["params"]["encoder"]},
             "batch_stats": {**stepped["batch_stats"],
                             "encoder": variables["batch_stats"]["encoder"]}}

    def encoder(group):
        return method.encoder_loss({**start["params"], "encoder": group}, start, images,
                                   jax.random.key(0))

    (loss, aux), grads = jax.value_and_grad(encoder, has_aux=True)(start["params"]["encoder"])
    fx.close("izi_f terms (residual, feature residual)",
             (aux["residual"], aux["feature_residual"]),
             (fx.output("residual"), fx.output("feature_residual")))
    ref_grads = from_reference(fx, "grads", {"params": template["params"]}, KEYS)["params"]
    fx.close("encoder gradient", grads, ref_grads["encoder"], GRADIENT_TOL)

    state, metrics = run_step(start, 5)  # the first step of phase 2
    assert metrics["phase"] == 1
    fx.close("izi_f loss (train step)", metrics["loss_encoder"], fx.output("enc_cost"))
    fx.close("encoder after one TF1 RMSProp(5e-5) step", state["params"]["encoder"],
             stepped["params"]["encoder"], GRADIENT_TOL)
    before = start["params"]["encoder"]
    fx.close("encoder one-step update (TF1 RMSProp)", update(state["params"]["encoder"], before),
             update(stepped["params"]["encoder"], before), GRADIENT_TOL)
    fx.close("encoder BatchNorm running means after its step",
             _only(state["batch_stats"]["encoder"], "mean"),
             _only(stepped["batch_stats"]["encoder"], "mean"))
    for group in ("generator", "critic"):  # frozen in phase 2: bit-identical
        same = jax.tree.map(np.array_equal, state["params"][group], start["params"][group])
        assert all(jax.tree.leaves(same)), group
    same = jax.tree.map(np.array_equal, state["batch_stats"]["generator"],
                        start["batch_stats"]["generator"])
    assert all(jax.tree.leaves(same))

    scored = {**state, "params": {**state["params"], "encoder": stepped["params"]["encoder"]},
              "batch_stats": {**state["batch_stats"],
                              "encoder": stepped["batch_stats"]["encoder"]}}
    test = jnp.asarray(fx.input("test_images"))
    scores = jax.jit(dataclasses.replace(method, sigma=0.0).score)(scored, test)
    fx.close("image score A_R + kappa A_D", scores.image, fx.output("test_score"))
    residual = np.mean((2 * fx.input("test_images") - 1 - fx.output("test_recon")) ** 2, -1) / 4
    fx.close("map (library addition): squared residual of their G(E(x))", scores.maps,
             residual)
