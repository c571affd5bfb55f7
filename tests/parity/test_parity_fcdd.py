"""FCDD against the authors' code (liznerski/fcdd, fixture by ``experiments/parity/fcdd.py``):
the trainable part of ``FCDD_CNN224_VGG_F`` (conv, BatchNorm, ReLU x 2 and the 1x1 output)
at reduced widths, its hypersphere-classifier loss, gradients, one SGD step with the code's
MVTec settings, the eval-mode heatmap and score, the receptive-field upsampling and the
malformed-normal images with the invert rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from parity_harness import GRADIENT_TOL, Fixture, parameter_tree

from anomjax.backbones.convert import torch_to_flax
from anomjax.data.anomalies import malformed_normal
from anomjax.methods.one_class.fcdd import FCDD, Head, hsc_loss, pseudo_huber
from anomjax.nn.receptive_upsample import receptive_upsample

WIDTHS = (16, 16)


def torch_name(path: tuple[str, ...], depth: int = len(WIDTHS)) -> str:
    """``Conv_i`` / ``BatchNorm_i`` -> ``features.{15 + 3 i}`` / ``features.{16 + 3 i}``; the
    last ``Conv`` -> ``conv_final`` (the code's ``FCDD_CNN224_VGG_F`` indices)."""
    kind, index = path[-1].rsplit("_", 1)
    i = int(index)
    if kind == "Conv" and i == depth:
        return "conv_final"
    return f"features.{15 + 3 * i + (kind == 'BatchNorm')}"


def test_fcdd_head_loss_gradients_step_and_maps_equal_the_code():
    fx = Fixture("fcdd")
    method = FCDD(head_widths=WIDTHS, weight_decay=1e-4)
    assert FCDD().weight_decay == 1e-4 and FCDD.default_batch_size == 16 * 8
    feats = jnp.asarray(fx.input("features"))
    labels = jnp.asarray(fx.input("labels"))
    template = jax.eval_shape(Head(WIDTHS).init, jax.random.key(0), feats)
    variables = fx.variables(template, torch_name)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}

    def loss(params):
        heat, stats = method.head_heatmap(params, state, feats, train=True)
        return hsc_loss(heat, labels), stats

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
    fx.close("loss", value, fx.output("loss"))
    want = fx.variables({"params": template["params"]}, torch_name, "grads")["params"]
    ours = {name: dict(leaves) for name, leaves in grads.items()}
    for i in range(len(WIDTHS)):
        # A bias before train-mode BatchNorm has zero gradient: both sides hold rounding
        # noise, bounded here and left out of the relative error.
        for tree in (ours, want):
            assert np.abs(tree[f"Conv_{i}"]["bias"]).max() < 1e-6
            tree[f"Conv_{i}"]["bias"] = np.zeros(WIDTHS[i], np.float32)
    fx.close("grads", ours, want, GRADIENT_TOL)
    fx.close("forward (train mode, pseudo-Huber)", method.head_heatmap(
        state["params"], state, feats, train=True)[0], pseudo_huber(fx.output("head")))

    opt = method.optimizer(200 * 10)
    updates, _ = opt.update(grads, opt.init(state["params"]), state["params"])
    stepped = optax.apply_updates(state["params"], updates)
    want = fx.variables(template, torch_name, "stepped")
    fx.close("stepped params", stepped, want["params"], GRADIENT_TOL)
    fx.close("running statistics", stats, want["batch_stats"])

    heat, _ = method.head_heatmap(stepped, {"batch_stats": stats}, feats)
    fx.close("heatmap (eval)", heat, fx.output("heatmap"))
    fx.close("image score", jnp.mean(heat, axis=(1, 2)), fx.output("score"))


def test_fcdd_upsampling_and_malformed_images_equal_the_code():
    fx = Fixture("fcdd")
    r, j, s = (int(v) for v in fx.input("reception"))
    maps = receptive_upsample(jnp.asarray(fx.input("heat8")), (64, 64), stride=j, kernel=r,
                              sigma=float(fx.input("gauss_std")), offset=s - (r - 1) // 2)
    fx.close("receptive upsampling", maps, fx.output("upsampled"))

    images, noise = fx.input("images") / 255, fx.input("confetti") / 255
    out = jax.vmap(malformed_normal)(jnp.asarray(images), jnp.asarray(noise))
    ref = fx.output("malformed")
    assert np.any(ref[3] > 0)  # the black image was brightened: the invert rule
    fx.close("malformed normal (invert rule)", out * 255, ref)


def test_fcdd_full_width_trainable_tree_matches_the_code():
    tree = parameter_tree("fcdd")
    template = jax.eval_shape(Head((512, 512)).init, jax.random.key(0),
                              jnp.zeros((1, 28, 28, 256)))
    # Every name and shape checked both ways (the harness's mapping on zero tensors).
    torch_to_flax(template, {k: np.zeros(v, np.float32) for k, v in tree["shapes"].items()},
                  torch_name, "fcdd_tree.json")
    count = sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(template["params"]))
    assert count == tree["parameter_count"]
