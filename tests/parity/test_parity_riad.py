"""RIAD against the unofficial PyTorch implementation (taikiinoue45/RIAD: masks,
one-pass-per-mask reconstruction, MSGMS / SSIM / MSE losses, MSGMS map) with the DRAEM
discriminative U-Net as the network (VitjanZ/DRAEM); fixture by ``experiments/parity/riad.py``.
Compared: the train-mode reconstruction (BatchNorm statistics per pass), the three loss terms
and their sum, gradients, one Adam step with the runner's settings, running statistics, and
the eval-mode reconstruction and MSGMS map of the stepped network."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from parity_harness import GRADIENT_TOL, Fixture

from anomjax.methods.self_supervised.riad import RIAD
from anomjax.nn.losses import msgms_map

METHOD = RIAD(width=4, depth=5, ssim_padding="zero")  # the unofficial code's SSIM
DECODER = ("db_b", "db1", "db2", "db3", "db4")
UPS = ("up_b", "up1", "up2", "up3", "up4")


def torch_name(path: tuple[str, ...]) -> str:
    """Our ``UNet`` module path -> ``DiscriminativeSubNetwork`` names."""
    kind, index = path[0].rsplit("_", 1)
    i = int(index)
    if kind == "Conv":
        return "decoder_segment.fin_out.0"
    layer = 0 if path[-1].startswith("Conv") else 1
    if kind == "Up":
        return f"decoder_segment.{UPS[i]}.{1 + layer}"
    j = 3 * int(path[1].rsplit("_", 1)[1]) + layer  # ConvBNReLU_j: conv 3j, BatchNorm 3j + 1
    if i <= METHOD.depth:
        return f"encoder_segment.block{i + 1}.{j}"
    return f"decoder_segment.{DECODER[i - METHOD.depth - 1]}.{j}"


def biases_before_batch_norm(tree: dict, check: Callable[[jax.Array], bool]) -> dict:
    """``tree`` with the biases of convolutions followed by train-mode BatchNorm set to 0,
    after ``check`` on each: their exact gradient is zero, so both sides hold rounding noise
    (and Adam's first step turns that noise into steps of +-lr of either sign)."""
    def zero(path: tuple, leaf: jax.Array) -> jax.Array:
        names = [p.key for p in path]
        if names[-1] == "bias" and names[-2] == "Conv_0" and len(names) > 2:
            assert check(leaf), names
            return jnp.zeros_like(leaf)
        return jnp.asarray(leaf)

    return jax.tree_util.tree_map_with_path(zero, tree)


def test_riad_training_step_and_map_equal_the_reference():
    fx = Fixture("riad")
    images = jnp.asarray(fx.input("images"))
    template = jax.eval_shape(METHOD.init, jax.random.key(0), images)
    variables = fx.variables(template, torch_name)
    masks = jnp.broadcast_to(jnp.asarray(fx.input("masks_8")), (2, 3, 32, 32))

    (value, aux), grads = jax.value_and_grad(METHOD.masked_loss, has_aux=True)(
        variables["params"], variables["batch_stats"], images, masks)
    rec, _ = METHOD.inpaint_passes(variables["params"], variables["batch_stats"], images, masks)
    fx.close("reconstruction (train, BatchNorm per pass)", rec, fx.output("reconstruction"))
    for ours, theirs in (("l2", "mse"), ("msgms", "msgms"), ("ssim", "ssim")):
        fx.close(f"loss {ours}", aux[ours], fx.output(theirs))
    fx.close("loss", value, fx.output("loss"))
    want = fx.variables({"params": template["params"]}, torch_name, "grads")["params"]
    noise = lambda g: float(jnp.abs(g).max()) < 1e-4  # noqa: E731 (a sum over B x H x W)
    fx.close("grads", *(biases_before_batch_norm(tree, noise) for tree in (grads, want)),
             GRADIENT_TOL)

    # The runner's Adam(lr=1e-4, weight_decay=1e-5): our Adam with coupled decay added.
    opt = optax.chain(optax.add_decayed_weights(1e-5), METHOD.optimizer(1))
    updates, _ = opt.update(grads, opt.init(variables["params"]), variables["params"])
    stepped = optax.apply_updates(variables["params"], updates)
    want = fx.variables(template, torch_name, "stepped")
    # Adam's first step moves every element by about lr * sign(g): where g is at rounding
    # level (the deepest blocks are 2x2 and 1x1 at 32 px, batch 2, so BatchNorm leaves almost
    # no gradient) the sign is arbitrary. Every element is within 2 lr of the reference, and
    # the relative error is recorded at that resolution (2 lr / max|param| ~ 4e-3).
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), stepped,
                                  want["params"])
    assert max(jax.tree_util.tree_leaves(diff)) <= 2.01e-4
    fx.close("stepped params (within 2 lr)", stepped, want["params"], 4e-3)
    stats = aux["batch_stats"]
    fx.close("running statistics (three passes)", stats, want["batch_stats"])

    net = METHOD._net()
    eval_masks = jnp.broadcast_to(jnp.asarray(fx.input("masks_4")), (2, 3, 32, 32))
    rec, _ = RIAD.combine(images, eval_masks, lambda x: (net.apply(
        {"params": stepped, "batch_stats": stats}, x), None))
    fx.close("reconstruction (eval)", rec, fx.output("eval_reconstruction"))
    fx.close("MSGMS map", msgms_map(images, rec), fx.output("msgms_map"))
