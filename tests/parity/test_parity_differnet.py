"""DifferNet against the authors' code (marco-rudolph/differnet, fixture written by
``experiments/parity/differnet.py``): on the same weights (a random ResNet-18 cut after
``layer1`` as the feature extractor on both sides) and images, the test copies' rotations,
the pooled multi-scale embedding, every coupling block's output, the chain's log-determinant,
the loss, every gradient, one step of the authors' Adam, the image score and the gradient
map (scored in chunks and in one program); and the full-width parameter tree."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

from anomjax.backbones import resnet
from anomjax.methods.flows.common import rotate
from anomjax.methods.flows.differnet import DifferNet
from anomjax.nn.teacher import teacher
from tests.parity.parity_harness import GRADIENT_TOL, Fixture, parameter_tree

METHOD = DifferNet(sigma_side=0, backbone="resnet18", taps=("layer1",), coupling_blocks=2,
                   fc_internal=32, n_transforms=4, n_transforms_test=4)
LAYERS = {"fc0": "fc1", "fc1": "fc2", "fc2": "fc2b", "out": "fc3"}


def module_key(path: tuple[str, ...]) -> str:
    """``("block1", "first", "fc0")`` -> ``module_list.4.s2.fc1``: block ``k`` is node
    ``2 + 2k`` of the authors' graph (input, then permutation and coupling per block); our
    ``first`` subnet (it transforms the first half) is their ``s2``; hidden layers
    ``fc0..fc2, out`` are their ``fc1, fc2, fc2b, fc3``."""
    block, subnet, layer = path
    k = int(block.removeprefix("block"))
    return f"module_list.{2 + 2 * k}.{ {'first': 's2', 'second': 's1'}[subnet]}.{LAYERS[layer]}"


@pytest.fixture(scope="module")
def fx() -> Fixture:
    return Fixture("differnet")


@pytest.fixture(scope="module")
def setup(fx):
    net = teacher("resnet18").module
    template = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, taps=("layer1",)),
                              jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    backbone = fx.variables(template, resnet.torch_module_key, prefix="backbone.")
    flow = METHOD.flow_params(jax.random.key(0), 3 * 64)

    def mapped(group: str) -> Any:
        return fx.variables({"params": flow}, module_key, group=group, prefix="nf.")["params"]

    state = {"params": jax.tree.map(jnp.asarray, mapped("weights")),
             "frozen": {"teacher": jax.tree.map(jnp.asarray, backbone)}}
    return state, mapped


def test_test_copies_are_the_authors_rotations(fx):
    images = jnp.repeat(jnp.asarray(fx.input("images")), 4, axis=0)
    angles = jnp.tile(jnp.arange(4.0) * 90.0, 2)
    fx.close("test copies (rotation)", rotate(images, angles), fx.output("test_copies"))


def test_embedding_blocks_and_log_det(fx, setup):
    state, _ = setup
    copies = jnp.asarray(fx.input("train_copies"))
    y = jax.jit(METHOD._embed)(state, copies)
    fx.close("embedding", y, fx.output("embedding"))
    bijectors = list(reversed(METHOD._flow(state["params"], y.shape[-1]).bijectors))
    x, total = y, jnp.zeros(y.shape[0])
    for k in range(METHOD.coupling_blocks):
        for bijector in bijectors[3 * k:3 * k + 3]:  # permutation, first half, second half
            x, log_det = bijector.forward_and_log_det(x)
            total = total + log_det
        fx.close(f"block {k} output", x, fx.output(f"block{k}"))
    fx.close("latent", x, fx.output("latent"))
    fx.close("chain log-det", total, fx.output("log_det"))


def test_loss_gradients_and_one_adam_step(fx, setup):
    """The loss of the authors' randomly rotated copies (our ``loss`` draws its own angles:
    the loss is its mean over the copies of ``_nll``)."""
    state, mapped = setup
    copies = jnp.asarray(fx.input("train_copies"))

    def loss(p: Any) -> jax.Array:
        return jnp.mean(METHOD._nll(p, state, copies)[0])

    params = state["params"]
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    fx.close("loss", value, fx.output("loss"))
    fx.close("gradients", grads, mapped("grads"), GRADIENT_TOL)
    opt = METHOD.optimizer(1)
    updates, _ = opt.update(grads, opt.init(params), params)
    fx.close("stepped params", optax.apply_updates(params, updates), mapped("stepped"),
             GRADIENT_TOL)
    ref_update = jax.tree.map(lambda a, b: a - b, mapped("stepped"), mapped("weights"))
    fx.close("Adam update", updates, ref_update, GRADIENT_TOL)


def test_image_score_and_gradient_map_in_chunks_and_in_one_program(fx, setup):
    """The authors' map is the gradient of the batch-mean loss over ``B T`` copies: ours (each
    copy's own loss) is it times ``(B T)^2``."""
    state, _ = setup
    images = jnp.asarray(fx.input("images"))
    copies = images.shape[0] * METHOD.n_transforms_test
    for chunk in (1, 2):
        method = dataclasses.replace(METHOD, score_chunk=chunk)
        scores = jax.jit(method.score)(state, images)
        fx.close("image score", scores.image, fx.output("image_score"))
        fx.close("gradient map", scores.maps, fx.output("map") * copies ** 2)


def test_full_width_parameter_tree():
    """The authors' full flow (AlexNet's 3 x 256 pooled features, 8 blocks, hidden width
    2048) against ours with the same sizes: names through the mapping, shapes, count. The
    authors' subnets also hold a ``BatchNorm1d`` that their forward never uses (not in ours)."""
    ref = parameter_tree("differnet")
    unused = {k: v for k, v in ref["shapes"].items() if ".bn." in k}
    method, dim = DifferNet(), 768
    ours = {}
    for k in range(method.coupling_blocks):
        for name, subnet, width in zip(("first", "second"), method._subnets(dim),
                                       (dim - dim // 2, dim // 2), strict=True):
            tree = jax.eval_shape(subnet.init, jax.random.key(0),
                                  jax.ShapeDtypeStruct((1, width), jnp.float32))["params"]
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                layer, leaf_name = (p.key for p in path)
                key = module_key((f"block{k}", name, layer))
                ours[f"{key}.{ {'kernel': 'weight'}.get(leaf_name, leaf_name)}"] = (
                    list(reversed(leaf.shape)))  # [in, out] -> [out, in]
    assert ours == {k: v for k, v in ref["shapes"].items() if k not in unused}
    bn_params = sum(math.prod(v) for k, v in unused.items() if k.endswith((".weight", ".bias")))
    assert sum(math.prod(s) for s in ours.values()) == ref["parameter_count"] - bn_params
    assert len(unused) == 4 * 2 * method.coupling_blocks  # weight, bias, mean, var
