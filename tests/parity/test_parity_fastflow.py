"""FastFlow against anomalib 2.7 (the paper published no code): LayerNorm, every flow step,
latents and log-dets, loss, gradients, one Adam step and the map
(``experiments/parity/fastflow.py``), and the full ResNet-18 parameter tree.

The fixture's encoder features stand in for the encoder (its port is pinned by the backbone
tests): :class:`FixtureFeatures` returns them as ``frozen_features``, so ``loss`` and
``score`` run unchanged. FrEIA's hard permutations (``w_perm``) are the reference's draws,
handed to our flows in place of ``random_permutation``'s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anomjax.backbones.convert import torch_to_flax
from anomjax.methods.flows import fastflow as fastflow_module
from anomjax.methods.flows.common import init_all_in_one
from anomjax.methods.flows.fastflow import FastFlow
from tests.parity.parity_harness import GRADIENT_TOL, Fixture, parameter_tree

CHANNELS, SIDES, STEPS, IMAGE = (8, 7), (8, 4), 4, 32


@dataclasses.dataclass(frozen=True)
class FixtureFeatures(FastFlow):
    """FastFlow whose encoder returns the fixture's features (``state["features"]``)."""

    def frozen_features(self, state, images):
        return list(state["features"])


METHOD = FixtureFeatures(taps=("layer1", "layer2"), flow_steps=STEPS)


@pytest.fixture(scope="module")
def fx() -> Fixture:
    return Fixture("fastflow")


def reference_permutation(fx: Fixture, level: int, step: int) -> np.ndarray:
    """FrEIA's ``w_perm`` ``[C, C, 1, 1]`` (``y_i = x_{p_i}``) as the index vector ``p``."""
    w = fx.input(f"flow.{level}.module_list.{step}.w_perm")[:, :, 0, 0]
    assert np.all(w.sum(0) == 1) and np.all(w.sum(1) == 1)
    return np.argmax(w, axis=1)


@pytest.fixture(autouse=True)
def reference_permutations(fx, monkeypatch):
    """Our flows draw permutation ``k`` of level ``l`` with seed ``1000 l + k``."""
    monkeypatch.setattr(fastflow_module, "random_permutation",
                        lambda seed, n: reference_permutation(fx, seed // 1000, seed % 1000))


def params_from(fx: Fixture, group: str) -> dict:
    """Our ``params`` tree filled from the reference group (checked: every tensor once,
    shapes equal)."""
    ref = fx.group(group)
    used, out = set(), {}

    def take(name: str, shape: tuple[int, ...]) -> jnp.ndarray:
        assert ref[name].shape == tuple(shape), (name, ref[name].shape, shape)
        used.add(name)
        return jnp.asarray(ref[name])

    for lv, (c, s) in enumerate(zip(CHANNELS, SIDES, strict=True)):
        template = init_all_in_one(jax.random.key(0), METHOD._subnets(c),
                                   jnp.zeros((1, s, s, c)), c)
        flow = {}
        for k in range(STEPS):
            prefix = f"flow.{lv}.module_list.{k}."
            subnet = {n[len(prefix) + len("subnet."):]: v for n, v in ref.items()
                      if n.startswith(prefix + "subnet.")}
            used.update(prefix + "subnet." + n for n in subnet)
            flow[f"block{k}"] = {
                "subnet": torch_to_flax({"params": template[f"block{k}"]["subnet"]}, subnet,
                                        lambda path: {"conv0": "0", "conv1": "2"}[path[0]],
                                        f"fastflow.npz:{group}/{prefix}")["params"],
                "scale": take(prefix + "global_scale", (c,)),
                "offset": take(prefix + "global_offset", (c,))}
        out[f"level{lv}"] = {"norm": {"scale": take(f"norm.{lv}.weight", (s, s, c)),
                                      "bias": take(f"norm.{lv}.bias", (s, s, c))},
                             "flow": flow}
    assert used == set(ref), sorted(set(ref) - used)
    return out


def state_of(fx: Fixture, params: dict) -> dict:
    feats = [jnp.asarray(fx.input(f"level{lv}/features")) for lv in range(len(CHANNELS))]
    return {"params": params, "features": feats, "frozen": {}}


def test_layer_norm_flow_steps_and_latents(fx):
    params = params_from(fx, "weights")
    state = state_of(fx, params)
    for lv, (f, c) in enumerate(zip(state["features"], CHANNELS, strict=True)):
        p = params[f"level{lv}"]
        x = fastflow_module.layer_norm(f, p["norm"])
        fx.close(f"LayerNorm level{lv}", x, fx.output(f"level{lv}/normed"))
        for k in range(STEPS):  # one all-in-one step at a time
            step = fastflow_module.all_in_one_flow(
                {"block0": p["flow"][f"block{k}"]}, METHOD._subnets(c)[k:k + 1], c,
                METHOD.clamp, [reference_permutation(fx, lv, k)], event_ndims=3)
            x, log_det = step.forward_and_log_det(x)
            fx.close(f"step{k} output", x, fx.output(f"level{lv}/block{k}/out"))
            fx.close(f"step{k} log-det", log_det, fx.output(f"level{lv}/block{k}/log_det"))
    for lv, (z, log_det) in enumerate(METHOD._latents(params, state, None)):
        fx.close(f"latent level{lv}", z, fx.output(f"level{lv}/z"))
        fx.close(f"log-det level{lv}", log_det, fx.output(f"level{lv}/log_det"))


def test_loss_gradients_and_one_adam_step(fx):
    params = params_from(fx, "weights")
    state = state_of(fx, params)
    images = jnp.zeros((2, IMAGE, IMAGE, 3))

    def loss(p):
        return METHOD.loss(p, state, images, jax.random.key(0), frozen=state["features"])[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    fx.close("loss", value, fx.output("loss"))
    fx.close("gradients", grads, params_from(fx, "grads"), GRADIENT_TOL)
    optimizer = METHOD.optimizer(1)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    stepped = optax.apply_updates(params, updates)
    fx.close("stepped params", stepped, params_from(fx, "stepped"), GRADIENT_TOL)
    fx.close("update (stepped - initial)", updates,
             jax.tree.map(jnp.subtract, params_from(fx, "stepped"), params), GRADIENT_TOL)


def test_map_and_score(fx):
    state = state_of(fx, params_from(fx, "weights"))
    scores = METHOD.score(state, jnp.zeros((2, IMAGE, IMAGE, 3)))
    fx.close("map", scores.maps, fx.output("anomaly_map"))
    fx.close("image score", scores.image, fx.output("image_score"))


def test_full_width_parameter_tree():
    """ResNet-18 at 256 px (paper): every flow and LayerNorm tensor of anomalib's model has
    our counterpart of the same shape, and the trainable counts agree."""
    tree = parameter_tree("fastflow")
    method = FastFlow(backbone="resnet18", taps=("layer1", "layer2", "layer3"))
    ours = {}
    for lv, (c, s) in enumerate(zip((64, 128, 256), (64, 32, 16), strict=True)):
        ours[f"level{lv}"] = {  # the shapes FastFlow.init gives ResNet-18's levels
            "norm": {"scale": jnp.zeros((s, s, c)), "bias": jnp.zeros((s, s, c))},
            "flow": init_all_in_one(jax.random.key(0), method._subnets(c),
                                    jnp.zeros((1, s, s, c)), c)}
    mapped = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(ours)[0]:
        names = [p.key for p in path]
        level = int(names[0][5:])
        if names[1] == "norm":
            key = f"norms.{level}.{ {'scale': 'weight', 'bias': 'bias'}[names[2]] }"
            shape = (leaf.shape[2], *leaf.shape[:2])
        else:
            prefix = f"fast_flow_blocks.{level}.module_list.{names[2][5:]}."
            if names[3] == "subnet":
                conv = {"conv0": "0", "conv1": "2"}[names[4]]
                key = f"{prefix}subnet.{conv}.{ {'kernel': 'weight', 'bias': 'bias'}[names[5]] }"
                shape = ((leaf.shape[3], leaf.shape[2], *leaf.shape[:2]) if names[5] == "kernel"
                         else leaf.shape)
            else:
                key = prefix + {"scale": "global_scale", "offset": "global_offset"}[names[3]]
                shape = (1, leaf.shape[0], 1, 1)
        mapped[key] = list(shape)
    reference = {k: v for k, v in tree["shapes"].items() if "w_perm" not in k}
    assert mapped == reference
    fixed = sum(int(np.prod(v)) for k, v in tree["shapes"].items() if "w_perm" in k)
    ours_count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(ours))
    assert ours_count == tree["parameter_count"] - fixed
