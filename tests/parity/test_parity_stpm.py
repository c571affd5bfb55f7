"""STPM against the authors' code (``gdwang08/STFPM``; fixture written by
``experiments/parity/stpm.py``): ResNet-18 teacher and student (taps ``layer1..3``), 64 px
images; every reference weight is seeded (``distillation_parity.seeded``).

Compared: teacher features, the student's train-mode features, the loss, the gradient of every
student parameter (first rows), the parameters and running statistics after one SGD step of
our real train step, the optimiser over three steps of fixed gradients, and the map and image
score of the initial state. The authors' map is not smoothed: the parity runs ``sigma=0``
(our default, 4, is the library's shared post-processing, see the module docstring)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from distillation_parity import close_optimizer_trace, close_rows, save_npz, seeded, to_torch
from parity_harness import GRADIENT_TOL, Fixture

from anomjax.backbones import variables_from_state_dict
from anomjax.backbones.registry import torch_state_dict_shapes
from anomjax.backbones.resnet import torch_module_key
from anomjax.methods import make_method
from anomjax.nn.teacher import tap_variables
from anomjax.train import init_train_state, make_train_step

TAPS = ("layer1", "layer2", "layer3")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    fx = Fixture("stpm")
    images = jnp.asarray(fx.input("images"))
    shapes = torch_state_dict_shapes("resnet18")
    teacher = seeded(shapes, int(fx.input("teacher_seed")))
    weights = save_npz(teacher, tmp_path_factory.mktemp("stpm"), "resnet18")
    method = make_method("stpm", backbone="resnet18", taps=TAPS, backbone_weights=weights,
                         sigma=0.0)
    state = method.init(jax.random.key(0), images)
    student = tap_variables("resnet18", variables_from_state_dict(
        "resnet18", seeded(shapes, int(fx.input("student_seed")))), TAPS)
    assert jax.tree.structure(student["params"]) == jax.tree.structure(state["params"])
    return fx, method, {**state, **student}, images


def test_features_loss_gradients_and_step(setup):
    fx, method, state, images = setup
    teacher = method.frozen_features(state, images)
    fx.close("teacher features", [teacher[t] for t in TAPS],
             [fx.output(f"teacher_{t}") for t in TAPS])
    student, _ = method._features({"params": state["params"],
                                   "batch_stats": state["batch_stats"]}, images, train=True)
    fx.close("student features (train mode)", [student[t] for t in TAPS],
             [fx.output(f"student_{t}") for t in TAPS])

    key = jax.random.key(0)
    (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state["params"], state, images, key)
    fx.close("loss", loss, fx.output("loss"))
    ref_grads = fx.group("grads")
    assert not any(k.startswith("layer4") for k in ref_grads)  # not in the loss
    close_rows(fx, "gradients", "grads", to_torch({"params": grads}, torch_module_key))

    optimizer = method.optimizer(1)
    train_state, metrics = make_train_step(method, optimizer)(
        init_train_state(jax.tree.map(jnp.copy, state), optimizer, key), images, key)
    fx.close("loss (train step)", metrics["loss"], fx.output("loss"))
    ours = to_torch({"params": train_state.params, "batch_stats": train_state.batch_stats},
                    torch_module_key)
    stepped = {k: v for k, v in fx.group("stepped").items() if not k.startswith("layer4")}
    params = {k: v for k, v in stepped.items() if not k.endswith(("running_mean", "running_var"))}
    fx.close("SGD step (params)", {k: ours[k][:4] for k in params}, params, GRADIENT_TOL)
    stats = {k: v for k, v in stepped.items() if k not in params}
    fx.close("running statistics after the step", {k: ours[k][:4] for k in stats}, stats)
    close_optimizer_trace(fx, method.optimizer(3))


def test_map_and_image_score(setup):
    fx, method, state, images = setup
    scores = method.score(state, images)
    fx.close("anomaly map", scores.maps, fx.output("maps"))
    fx.close("image score", scores.image, fx.output("image_scores"))
