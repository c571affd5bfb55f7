"""MKD against the authors' code (``rohban-lab/Knowledge_Distillation_AD``; fixture written by
``experiments/parity/mkd.py``): the ``'B'`` cloner with a ResNet-18 source (seeded; VGG16, the
authors' source, is not in anomjax), 128 px images.

Compared: source features, the cloner's train-mode output, the loss, the gradient of every
cloner parameter (first rows), the parameters and running statistics after one Adam step of
our real train step, the optimiser over three steps of fixed gradients, the image scores, the
guided-backpropagation attribution and the map of the initial state. Our loss is the paper's
``L_val + 2 L_dir``, twice the authors' ``L_dir + 0.5 L_val``: losses, gradients, scores and
the raw attribution are compared at half their value (the normalised map is unaffected)."""

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
    to_torch,
)
from parity_harness import Fixture, parameter_tree

from anomjax.backbones.registry import torch_state_dict_shapes
from anomjax.methods import make_method
from anomjax.methods.distillation.mkd import Cloner
from anomjax.train import init_train_state, make_train_step

TAPS = ("layer1", "layer2", "layer3", "layer4")
CONVS_PER_BLOCK = (2, 2, 3, 3, 3)  # VGG16's


def _sequential_indices() -> dict[str, str]:
    """Our cloner's module names -> the indices of ``make_arch``'s ``nn.Sequential``: conv
    (+ BatchNorm unless the next entry is the max-pool) + ReLU per conv, a max-pool per block."""
    names, index = {}, 0
    for block, convs in enumerate(CONVS_PER_BLOCK, start=1):
        for j in range(convs):
            names[f"block{block}_conv{j}"] = f"features.{index}"
            if j < convs - 1:
                names[f"block{block}_bn{j}"] = f"features.{index + 1}"
                index += 3
            else:
                index += 2
        index += 1
    return names


INDICES = _sequential_indices()


def module_key(path: tuple[str, ...]) -> str:
    return INDICES[path[0]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    fx = Fixture("mkd")
    images = jnp.asarray(fx.input("images"))
    source = seeded(torch_state_dict_shapes("resnet18"), int(fx.input("source_seed")))
    weights = save_npz(source, tmp_path_factory.mktemp("mkd"), "resnet18")
    method = make_method("mkd", backbone="resnet18", taps=TAPS, backbone_weights=weights)
    assert method.tap_relu and method.normalize_maps and method.localization == "gbp"
    state = method.init(jax.random.key(0), images)
    variables = fx.variables({"params": state["params"], "batch_stats": state["batch_stats"]},
                             module_key)
    return fx, method, {**state, **variables}, images


def test_full_width_cloner_parameter_tree():
    """The authors' shipped ``'B'`` cloner (VGG16's tap channels) has our cloner's tree."""
    tree = parameter_tree("mkd")
    cloner = Cloner((4, 8, 16, 32), (128, 256, 512, 512))
    variables = jax.eval_shape(lambda: cloner.init(jax.random.key(0),
                                                   jnp.zeros((1, 64, 64, 3)), train=False))
    variables = jax.tree.map(lambda v: np.zeros(v.shape, np.float32), variables)
    shapes = {k: list(v.shape) for k, v in to_torch(variables, module_key).items()}
    assert shapes == tree["shapes"]
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"])) == (
        tree["parameter_count"])


def test_cloner_loss_gradients_and_step(setup):
    fx, method, state, images = setup
    feats = method.frozen_features(state, images)
    fx.close("source features (first 16 channels)", [f[..., :16] for f in feats],
             [fx.output(f"source_layer{i + 1}") for i in range(4)])
    cloner = method._cloner(method._teacher())
    pred, _ = cloner.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                           images, train=True, mutable=["batch_stats"])
    fx.close("cloner (train mode, first 16 channels)", [p[..., :16] for p in pred],
             [fx.output(f"cloner_{i}") for i in range(4)])

    key = jax.random.key(0)
    (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state["params"], state, images, key)
    fx.close("loss (ours / 2)", loss / 2, fx.output("loss"))
    close_rows(fx, "gradients (ours / 2)", "grads",
               {k: v / 2 for k, v in to_torch({"params": grads}, module_key).items()})

    optimizer = method.optimizer(1)
    train_state, metrics = make_train_step(method, optimizer)(
        init_train_state(jax.tree.map(jnp.copy, state), optimizer, key), images, key)
    fx.close("loss (train step, ours / 2)", metrics["loss"] / 2, fx.output("loss"))
    ours = to_torch({"params": train_state.params, "batch_stats": train_state.batch_stats},
                    module_key)
    close_adam_step_and_running_means(fx, ours, fx.group("stepped"), method.optimizer(3))


def test_image_scores_attribution_and_map(setup):
    fx, method, state, images = setup
    scores = method.score(state, images)
    fx.close("image score (ours / 2)", scores.image / 2, fx.output("image_scores"))
    fx.close("GBP attribution (ours / 2)", method.attribution(state, images) / 2,
             fx.output("gbp_attribution"))
    fx.close("anomaly map (normalised, sigma 4)", scores.maps, fx.output("maps"))
