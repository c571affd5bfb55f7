"""CS-Flow against the authors' code (marco-rudolph/cs-flow, fixture written by
``experiments/parity/csflow.py``): on the same weights and feature pyramid, every coupling
block's output, the whole chain's log-determinant, the loss, every gradient, one step of
the authors' Adam (clipping, eps, weight decay), the image score and the three map modes;
and the full-width parameter tree against the authors' state dict."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anomjax.methods.flows.csflow import MAP_MODES, CSFlow
from anomjax.nn.flows import pack, unpack
from tests.parity.parity_harness import GRADIENT_TOL, Fixture, parameter_tree

# the fixture's sizes: 8 channels, maps 8/4/2 of a 64 px image (stride 8), hidden width 16
METHOD = CSFlow(tap="stage3", hidden=16)
IMAGES = jnp.zeros((2, 64, 64, 3))  # only the size matters: the features are the fixture's
GAMMA = re.compile(r"\.gamma\d$")


def module_key(path: tuple[str, ...]) -> str:
    """``("block1", "first", "conv_scale0_0")`` -> ``module_list.6.s2.conv_scale0_0``: block
    ``k`` is node ``4 + 2k`` of the authors' graph (3 inputs, then permutation and coupling
    per block); our ``first`` subnet (it transforms the first half) is their ``s2``."""
    block, subnet, *rest = path
    k = int(block.removeprefix("block"))
    name = {"first": "s2", "second": "s1"}[subnet]
    return ".".join([f"module_list.{4 + 2 * k}", name, *rest])


def _nest_gammas(tree: Any) -> Any:
    """``gamma_i`` leaves as ``{gamma_i: {"scale": leaf}}`` so that the checked mapping
    (which names leaves kernel/scale/bias) maps them to ``...gamma_i.weight``."""
    return {k: (_nest_gammas(v) if isinstance(v, dict)
                else {"scale": v} if k.startswith("gamma") else v) for k, v in tree.items()}


def _unnest_gammas(tree: Any) -> Any:
    return {k: (v["scale"] if k.startswith("gamma") else _unnest_gammas(v))
            if isinstance(v, dict) else v for k, v in tree.items()}


def mapped(fx: Fixture, template: Any, group: str) -> Any:
    """``group`` (weights, grads, stepped) of the fixture as our params tree (checked)."""
    return _unnest_gammas(fx.variables({"params": _nest_gammas(template)}, module_key,
                                       group=group)["params"])


@pytest.fixture(scope="module")
def fx() -> Fixture:
    fixture = Fixture("csflow")
    fixture.arrays = {(f"{k}.weight" if GAMMA.search(k) else k): v
                      for k, v in fixture.arrays.items()}
    return fixture


@pytest.fixture(scope="module")
def setup(fx):
    feats = [jnp.asarray(fx.input(f"scale{s}")) for s in range(3)]
    shapes = [tuple(f.shape[1:]) for f in feats]
    template = METHOD.flow_params(jax.random.key(0), shapes)
    params = jax.tree.map(jnp.asarray, mapped(fx, template, "weights"))
    return feats, shapes, template, params


def test_each_coupling_block_and_the_chains_log_det(fx, setup):
    feats, shapes, _, params = setup
    x = pack(feats)
    bijectors = list(reversed(METHOD._flow(params, shapes).bijectors))  # data -> latent order
    total = jnp.zeros(x.shape[0])
    for k in range(METHOD.coupling_blocks):
        for bijector in bijectors[3 * k:3 * k + 3]:  # permutation, first half, second half
            x, log_det = bijector.forward_and_log_det(x)
            total = total + log_det
        for s, y in enumerate(unpack(x, shapes)):
            fx.close(f"block {k} scale {s} output", y, fx.output(f"block{k}/scale{s}"))
    z, log_det, _ = jax.jit(METHOD._latents)(params, {}, IMAGES, feats)
    fx.close("chain log-det", log_det, fx.output("log_det"))
    np.testing.assert_allclose(total, log_det, rtol=1e-5)
    fx.close("latent", z, x)


def test_loss_gradients_and_one_adam_step(fx, setup):
    feats, _, template, params = setup

    def loss(p: Any) -> jax.Array:
        return METHOD.loss(p, {}, IMAGES, jax.random.key(0), feats)[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    fx.close("loss", value, fx.output("loss"))
    fx.close("gradients", grads, mapped(fx, template, "grads"), GRADIENT_TOL)
    opt = METHOD.optimizer(1)
    updates, _ = opt.update(grads, opt.init(params), params)
    stepped = optax.apply_updates(params, updates)
    ref_stepped = mapped(fx, template, "stepped")
    fx.close("stepped params", stepped, ref_stepped, GRADIENT_TOL)
    ref_update = jax.tree.map(lambda a, b: a - b, ref_stepped, mapped(fx, template, "weights"))
    fx.close("Adam update", updates, ref_update, GRADIENT_TOL)


def test_maps_and_image_score(fx, setup):
    feats, _, _, params = setup

    @jax.jit
    def scores(p: Any) -> dict[str, Any]:  # one program: the modes share the flow
        return {mode: dataclasses.replace(METHOD, map_mode=mode).score({"params": p}, IMAGES,
                                                                        feats)
                for mode in MAP_MODES}

    for mode, s in scores(params).items():
        fx.close(f"map ({mode})", s.maps, fx.output(f"map_{mode}"))
        fx.close("image score", s.image, fx.output("image_score"))
    assert CSFlow().map_mode == "finest"  # the authors' map by default


def test_full_width_parameter_tree():
    """The authors' full model (EfficientNet-B5's 304 channels at 768 px: maps 24/12/6,
    hidden width 1024, kernels 3, 3, 3, 5) against ours with the same sizes: every name
    through the mapping, every shape (PyTorch layout), the parameter count."""
    ref = parameter_tree("csflow")
    channels, half = 304, 152
    ours: dict[str, list[int]] = {}
    for k, (first, second) in enumerate(CSFlow()._subnets(channels)):
        for name, subnet, width in (("first", first, channels - half), ("second", second, half)):
            sample = tuple(jax.ShapeDtypeStruct((1, s, s, width), jnp.float32)
                           for s in (24, 12, 6))
            tree = jax.eval_shape(subnet.init, jax.random.key(0), sample)["params"]
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                *modules, leaf_name = [p.key for p in path]
                leaf_name = {"kernel": "weight"}.get(leaf_name, leaf_name)  # bias, gamma_i
                shape = list(leaf.shape)
                if len(shape) == 4:  # HWIO -> OIHW
                    shape = [shape[3], shape[2], shape[0], shape[1]]
                ours[module_key((f"block{k}", name, *modules)) + f".{leaf_name}"] = shape
    assert ours == ref["shapes"]
    assert sum(math.prod(s) for s in ours.values()) == ref["parameter_count"]
