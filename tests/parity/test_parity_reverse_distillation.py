"""Reverse Distillation against the authors' code (``hq-deng/RD4AD``; fixture written by
``experiments/parity/reverse_distillation.py``): ResNet-18 teacher, full-width OCBE and
decoder, 64 px images; every reference weight is seeded (``distillation_parity.seeded``).

Compared: teacher features, the OCBE + decoder output in train mode, the loss, the gradient
of every parameter (first rows), the parameters and running means after one Adam step of
our real train step, the optimiser over three steps of fixed gradients (betas included), and
the map and image score of the initial state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from distillation_parity import (
    close_adam_step_and_running_means,
    close_rows,
    save_npz,
    seeded,
    to_flax,
    to_torch,
)
from parity_harness import Fixture, parameter_tree

from anomjax.backbones.registry import torch_state_dict_shapes
from anomjax.methods import make_method
from anomjax.methods.distillation.reverse_distillation import ReverseDistillationNet
from anomjax.train import init_train_state, make_train_step

TAPS = ("layer1", "layer2", "layer3")
UNUSED = ("bn.conv4.weight", "bn.bn4.")  # built by BN_layer, never used in its forward


def module_key(path: tuple[str, ...]) -> str:
    """Our OCBE/decoder module path -> the reference's ``bn.``/``decoder.`` prefix."""
    if path[0] == "bottleneck":
        if path[1] != "oce":
            return "bn." + {"mff_conv": "conv", "mff_bn": "bn"}[path[1][:-1]] + path[1][-1]
        block, layer = path[2].removeprefix("block"), path[3]
        inner = {"shortcut": "downsample.0", "shortcut_bn": "downsample.1"}.get(layer, layer)
        return f"bn.bn_layer.{block}.{inner}"
    stage, block = int(path[1].removeprefix("stage")) + 1, path[2].removeprefix("block")
    inner = {"shortcut": "upsample.0", "shortcut_bn": "upsample.1"}.get(path[3], path[3])
    return f"decoder.layer{stage}.{block}.{inner}"


TRANSPOSED = {f"decoder.layer{i}.0.{m}.weight" for i in (1, 2, 3) for m in ("conv1", "upsample.0")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    fx = Fixture("reverse_distillation")
    images = jnp.asarray(fx.input("images"))
    teacher = seeded(torch_state_dict_shapes("resnet18"), int(fx.input("teacher_seed")))
    weights = save_npz(teacher, tmp_path_factory.mktemp("rd"), "resnet18")
    method = make_method("reverse_distillation", sigma_side=0, backbone="resnet18", taps=TAPS,
                         backbone_weights=weights)
    state = method.init(jax.random.key(0), images)
    tree = parameter_tree("reverse_distillation")
    student = seeded(tree["shapes"], int(fx.input("student_seed")))
    unused = sorted(k for k in student if k.startswith(UNUSED))
    assert unused and not any(k in fx.group("grads") for k in unused)
    student = {k: v for k, v in student.items() if k not in unused}
    template = {"params": state["params"], "batch_stats": state["batch_stats"]}
    variables = to_flax(template, student, module_key, fx.path.name, TRANSPOSED)
    state = {**state, **variables}
    return fx, method, state, images


def test_full_width_parameter_tree(setup):
    fx, _, state, _ = setup
    tree = parameter_tree("reverse_distillation")
    ours = {k: list(v.shape) for k, v in to_torch(
        {"params": state["params"], "batch_stats": state["batch_stats"]}, module_key,
        TRANSPOSED).items()}
    reference = {k: v for k, v in tree["shapes"].items() if not k.startswith(UNUSED)}
    assert ours == reference
    unused = sum(int(np.prod(v)) for k, v in tree["shapes"].items()
                 if k.startswith(UNUSED) and not k.endswith("running_mean")
                 and not k.endswith("running_var"))
    assert sum(x.size for x in jax.tree.leaves(state["params"])) == (
        tree["parameter_count"] - unused)


def test_teacher_decoder_loss_gradients_and_step(setup):
    fx, method, state, images = setup
    feats = method.frozen_features(state, images)
    for i, f in enumerate(feats):
        fx.close(f"teacher {TAPS[i]}", f, fx.output(f"teacher_layer{i + 1}"))
    net = ReverseDistillationNet((64, 128, 256), 512, method.blocks, method.final_relu)
    recon, _ = net.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                         feats, train=True, mutable=["batch_stats"])
    fx.close("OCBE + decoder (train mode)", list(recon),
             [fx.output(f"decoder_{i}") for i in range(3)])

    key = jax.random.key(0)
    (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state["params"], state, images, key)
    fx.close("loss", loss, fx.output("loss"))
    close_rows(fx, "gradients", "grads", to_torch({"params": grads}, module_key, TRANSPOSED))

    optimizer = method.optimizer(1)
    train_state, metrics = make_train_step(method, optimizer)(
        init_train_state(jax.tree.map(jnp.copy, state), optimizer, key), images, key)  # donated
    fx.close("loss (train step)", metrics["loss"], fx.output("loss"))
    ours = to_torch({"params": train_state.params, "batch_stats": train_state.batch_stats},
                    module_key, TRANSPOSED)
    ref = {k: v for k, v in fx.group("stepped").items() if not k.startswith(UNUSED)}
    close_adam_step_and_running_means(fx, ours, ref, method.optimizer(3))


def test_map_and_image_score(setup):
    fx, method, state, images = setup
    scores = method.score(state, images)
    fx.close("anomaly map", scores.maps, fx.output("maps"))
    fx.close("image score", scores.image, fx.output("image_scores"))
