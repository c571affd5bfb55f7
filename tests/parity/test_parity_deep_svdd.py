"""Deep SVDD against the authors' code (lukasruff/Deep-SVDD-PyTorch, fixture by
``experiments/parity/deep_svdd.py``): the LeNet encoder in train and eval mode, the centre,
both objectives' loss, gradients, one Adam step (parameters and running statistics), the
soft-boundary radius and the test scores of the stepped network; the full-width
``CIFAR10_LeNet`` parameter tree. Also the autoencoder pretraining phase (no reference run:
behaviour)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from parity_harness import GRADIENT_TOL, Fixture, parameter_tree

from anomjax.backbones.convert import torch_to_flax
from anomjax.methods.one_class.deep_svdd import DeepSVDD, Encoder

WIDTHS, REP_DIM = (8, 8, 8), 16


def torch_name(path: tuple[str, ...]) -> str:
    """``Conv_i`` / ``BatchNorm_i`` / ``Dense_0`` -> ``conv{i+1}`` / ``bn2d{i+1}`` / ``fc1``."""
    kind, index = path[-1].rsplit("_", 1)
    return {"Conv": f"conv{int(index) + 1}", "BatchNorm": f"bn2d{int(index) + 1}",
            "Dense": "fc1"}[kind]


def chw_to_hwc(tensors: dict[str, np.ndarray], grid: int) -> dict[str, np.ndarray]:
    """The code flattens ``[C, h, w]`` before ``fc1``, we ``[h, w, C]``: reorder its columns
    (a layout change, like the conv kernels' transposition)."""
    out = dict(tensors)
    w = out["fc1.weight"]
    out["fc1.weight"] = w.reshape(w.shape[0], -1, grid, grid).transpose(0, 2, 3, 1).reshape(
        w.shape[0], -1)
    return out


def reference(fx: Fixture, template: Any, group: str, prefix: str = "") -> dict[str, Any]:
    return torch_to_flax(template, chw_to_hwc(fx.group(group, prefix), 4), torch_name,
                         f"{fx.path.name}:{group}/{prefix}")


@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
def test_deep_svdd_equals_the_code(objective):
    fx = Fixture("deep_svdd")
    images = jnp.asarray(fx.input("images"))
    method = DeepSVDD(objective=objective, nu=float(fx.input("nu")), widths=WIDTHS,
                      rep_dim=REP_DIM, pretrain_steps=0, warmup_steps=0)
    template = jax.eval_shape(Encoder(WIDTHS, REP_DIM).init, jax.random.key(0), images)
    variables = reference(fx, template, "weights")
    params, stats = variables["params"], variables["batch_stats"]
    fx.close("forward (eval)", method._encode(params, stats, images, False)[0],
             fx.output("features_eval"))
    fx.close("forward (train)", method._encode(params, stats, images, True)[0],
             fx.output("features_train"))

    centre = method.centre(params, stats, np.asarray(images))
    fx.close("centre", centre, fx.output(f"{objective}/centre"))
    state = {"params": params, "frozen": {"centre": centre},
             "batch_stats": {"net": stats, "radius": jnp.zeros(()),
                             "steps": jnp.zeros((), jnp.int32)}}
    (value, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, state, images, jax.random.key(0))
    fx.close(f"{objective} loss", value, fx.output(f"{objective}/loss"))
    want = reference(fx, {"params": template["params"]}, "grads", f"{objective}/")
    fx.close(f"{objective} grads", grads, want["params"], GRADIENT_TOL)

    opt = method.optimizer(1)
    updates, _ = opt.update(grads, opt.init(params), params)
    new_params = optax.apply_updates(params, updates)
    want = reference(fx, template, "stepped", f"{objective}/")
    fx.close(f"{objective} stepped params", new_params, want["params"], GRADIENT_TOL)
    new_stats = aux["batch_stats"]
    fx.close(f"{objective} running statistics", new_stats["net"], want["batch_stats"])
    fx.close(f"{objective} radius", new_stats["radius"], fx.output(f"{objective}/radius"))

    scores = method.score({**state, "params": new_params, "batch_stats": new_stats}, images)
    fx.close(f"{objective} image scores", scores.image, fx.output(f"{objective}/scores"))


def test_deep_svdd_full_width_tree_matches_cifar10_lenet():
    tree = parameter_tree("deep_svdd")
    template = jax.eval_shape(Encoder((32, 64, 128), 128).init, jax.random.key(0),
                              jnp.zeros((1, 32, 32, 3)))
    torch_to_flax(template, {k: np.zeros(v, np.float32) for k, v in tree["shapes"].items()},
                  torch_name, "deep_svdd_tree.json")  # every name and shape, both ways
    count = sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(template["params"]))
    assert count == tree["parameter_count"]


def test_deep_svdd_pretraining_learns_and_sets_the_start():
    """``pretrain_steps > 0``: the autoencoder's reconstruction error falls, ``init`` starts
    the encoder from the pretrained weights, and the centre is their mean feature."""
    rng = np.random.default_rng(0)
    images = np.clip(0.5 + 0.1 * rng.normal(size=(8, 16, 16, 3)), 0, 1).astype(np.float32)
    method = DeepSVDD(widths=(4, 4), rep_dim=8, pretrain_steps=60, pretrain_batch=4,
                      learning_rate=1e-2)
    key = jax.random.key(0)
    params, stats, losses = method.pretrain(key, images)
    assert losses.shape == (60,) and losses[-5:].mean() < 0.5 * losses[:5].mean()
    state = method.init(key, jnp.asarray(images))
    jax.tree_util.tree_map(np.testing.assert_allclose, state["params"], params)
    untrained = DeepSVDD(widths=(4, 4), rep_dim=8, pretrain_steps=0).init(key, images)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                   state["params"], untrained["params"])
    assert min(jax.tree_util.tree_leaves(moved)) > 1e-3
    np.testing.assert_allclose(state["frozen"]["centre"],
                               method.centre(params, stats, images), rtol=1e-6)
