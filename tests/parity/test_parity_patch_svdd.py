"""Patch SVDD against the authors' code (nuclearboy95/Anomaly-Detection-PatchSVDD-PyTorch,
fixture by ``experiments/parity/patch_svdd.py``): the hierarchical encoder on the code's
training pairs (64 px patches through their quadrants), the four loss terms and their sum,
gradients, one Adam step, and the product of the two scales' nearest-neighbour maps and the
image scores of a fixed state; the full-width parameter tree."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from parity_harness import GRADIENT_TOL, Fixture, parameter_tree

from anomjax.backbones.convert import torch_to_flax
from anomjax.methods.one_class.patch_svdd import PatchSVDD

TINY = PatchSVDD(dim=8, encoder_widths=(8,) * 7, head_width=16)
TASKS = ("pos_64", "pos_32", "svdd_64", "svdd_32")


def torch_name(path: tuple[str, ...]) -> str:
    """Our ``net`` group's module path -> the code's ``{enc, cls_64, cls_32}`` names."""
    group, rest = path[0], path[1:]
    if group == "encoder":
        return f"enc.enc.conv{int(rest[0].split('_')[1]) + 1}"
    if group == "head":
        return f"enc.conv{int(rest[0].split('_')[1]) + 1}"
    return f"{group}.fc{int(rest[0].split('_')[1]) + 1}" if rest else f"{group}.fc3"


def template(method: PatchSVDD) -> dict:
    shapes = jax.eval_shape(method.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return {"params": shapes["params"]["net"]}


def test_patch_svdd_training_equals_the_code():
    fx = Fixture("patch_svdd")
    params = fx.variables(template(TINY), torch_name)["params"]
    pairs = {}
    for task in TASKS:
        parts = [jnp.asarray(fx.input(f"{task}/{i}")) for i in range(3 if "pos" in task else 2)]
        pairs[task] = tuple(parts)
    fx.close("forward 64 px (quadrants)", TINY.embed_patches(params, pairs["pos_64"][0], 64),
             fx.output("emb_64"))
    fx.close("forward 32 px", TINY.embed_patches(params, pairs["pos_32"][0], 32),
             fx.output("emb_32"))

    (value, aux), grads = jax.value_and_grad(TINY.pair_loss, has_aux=True)(params, pairs)
    for task in TASKS:
        fx.close(f"loss {task}", aux[task], fx.output(task))
    fx.close("loss", value, fx.output("loss"))
    # The code normalises fc3's weight under torch.no_grad: no .grad there, zero here.
    want = fx.group("grads") | {f"cls_{k}.fc3.weight": np.zeros((8, 128), np.float32)
                                for k in (64, 32)}
    fx.close("grads", grads, torch_to_flax(template(TINY), want, torch_name, "grads")["params"],
             GRADIENT_TOL)

    opt = TINY.optimizer(1).optimizers["net"]
    updates, _ = opt.update(grads, opt.init(params), params)
    fx.close("stepped params", optax.apply_updates(params, updates),
             fx.variables(template(TINY), torch_name, "stepped")["params"], GRADIENT_TOL)


def test_patch_svdd_maps_equal_the_code():
    fx = Fixture("patch_svdd")
    images = jnp.asarray(fx.input("images"), jnp.float32)
    method = PatchSVDD(dim=8, encoder_widths=(8,) * 7, head_width=16, stride_64=16,
                       stride_32=4)
    state = method.init(jax.random.key(0), images[:2])
    state = {**state, "params": {"net": fx.variables(template(method), torch_name)["params"]}}
    np.testing.assert_allclose(state["frozen"]["mean_image"], np.mean(images[:2], axis=0),
                               rtol=1e-6)  # the per-pixel mean image (get_mean)
    state = method.calibrate(state, [SimpleNamespace(images=images[:2])])
    scores = method.score(state, images[2:])
    fx.close("maps (product of scales)", scores.maps, fx.output("maps"))
    fx.close("image scores", scores.image, fx.output("scores"))


def test_patch_svdd_full_width_tree_matches_the_code():
    tree = parameter_tree("patch_svdd")
    full = template(PatchSVDD())
    torch_to_flax(full, {k: np.zeros(v, np.float32) for k, v in tree["shapes"].items()},
                  torch_name, "patch_svdd_tree.json")  # every name and shape, both ways
    assert sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(full)) == tree[
        "parameter_count"]


def test_patch_svdd_default_update_budget_is_the_code_s():
    """100 pairs per image and epoch in updates of 64 (``main_train.py``), at batch 16."""
    method = PatchSVDD()
    assert method.pair_batch == 64 and PatchSVDD.default_batch_size == 16
    assert method.updates_per_step * method.pair_batch == 100 * PatchSVDD.default_batch_size
    phase = method.optimizer(10).phases[0]
    assert len(phase.updates) == 25 and {u.group for u in phase.updates} == {"net"}
