"""DRAEM against its authors' code (``experiments/parity/draem.py``, ``VitjanZ/DRAEM``): both
networks' forward passes, the loss and its terms, every gradient, one Adam step through our
real train step, the test-time map and image score, and the full-width parameter tree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anomjax.backbones.convert import TORCH_LEAF_NAMES
from anomjax.methods.self_supervised.draem import DRAEM
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.train.state import init_train_state
from anomjax.train.step import make_train_step
from tests.parity.parity_harness import GRADIENT_TOL, Fixture, parameter_tree

FX = Fixture("draem")


def whole_gradient_tol(fx: Fixture) -> float:
    """Tolerance of the whole-gradient comparison: train-mode BatchNorm over this small batch
    amplifies rounding, so the reference's own float32 gradient is far from its float64 one
    (the fixture's; 1.5e-2 of the largest gradient for DRAEM, 2.9e-2 with SSPCAB): ours must
    be no further (and per parameter tensor the smallest gradients are mostly noise)."""
    return max(GRADIENT_TOL, float(fx.output("float32_gradient_error")))
METHOD = DRAEM(rec_width=4, seg_width=4)
TARGET, AUGMENTED, MASK = (jnp.asarray(FX.input(k)) for k in ("target", "augmented", "mask"))


def _conv_bn(names: tuple[str, ...], prefix: str) -> str:
    """``(..., "ConvBNReLU_j", "Conv_0" | "BatchNorm_0")`` -> the authors' ``nn.Sequential``
    index: conv ``3j``, BatchNorm ``3j + 1``."""
    j = int(names[-2].split("_")[1])
    return f"{prefix}.{3 * j + (names[-1] == 'BatchNorm_0')}"


def rec_key(sspcab: bool):
    """Our ``ReconstructiveNet`` module path -> ``ReconstructiveSubNetwork``'s prefix."""
    encoder_blocks = 4 if sspcab else 5

    def key(names: tuple[str, ...]) -> str:
        head, index = names[0].rsplit("_", 1)
        i = int(index)
        if head == "Conv":
            return "decoder.fin_out.0"
        if head == "SSPCAB":
            layer = names[1]
            return "encoder.block5." + (f"se.fc{layer[-1]}" if layer.startswith("se_") else layer)
        if head == "Up":
            return f"decoder.up{i + 1}.{1 + (names[-1] == 'BatchNorm_0')}"
        if i < encoder_blocks:
            return _conv_bn(names, f"encoder.block{i + 1}")
        return _conv_bn(names, f"decoder.db{i - encoder_blocks + 1}")

    return key


def seg_key(names: tuple[str, ...]) -> str:
    """Our ``UNet`` module path -> ``DiscriminativeSubNetwork``'s prefix."""
    head, index = names[0].rsplit("_", 1)
    i = int(index)
    stages = ("_b", "1", "2", "3", "4")
    if head == "Conv":
        return "decoder_segment.fin_out.0"
    if head == "Up":
        return f"decoder_segment.up{stages[i]}.{1 + (names[-1] == 'BatchNorm_0')}"
    if i < 6:
        return _conv_bn(names, f"encoder_segment.block{i + 1}")
    return _conv_bn(names, f"decoder_segment.db{stages[i - 6]}")


def template(method: DRAEM) -> dict[str, Any]:
    return jax.eval_shape(method.init, jax.random.key(0), jax.ShapeDtypeStruct(
        TARGET.shape, jnp.float32))


def reference_state(method: DRAEM, group: str = "weights", fx: Fixture = FX) -> dict[str, Any]:
    """Our state with both networks' variables from ``fx``'s ``group`` (``grads``: params
    only)."""
    shapes = template(method)
    collections = ("params",) if group == "grads" else ("params", "batch_stats")
    nets = {net: fx.variables({c: shapes[c][net] for c in collections},
                              rec_key(method.sspcab) if net == "rec" else seg_key, group,
                              prefix=f"{net}.")
            for net in ("rec", "seg")}
    return {c: {n: v[c] for n, v in nets.items()} for c in collections}


def recording_gradients() -> optax.GradientTransformation:
    """An optax stage that keeps the gradient it receives in its state (passed on unchanged),
    so that one run of the real train step yields the gradient, the step and the loss."""
    return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                        lambda grads, _, params=None: (grads, grads))


def flat(tree: Any) -> dict[str, np.ndarray]:
    """``{"rec/Block_0/.../kernel": array}`` of a pytree."""
    return {"/".join(p.key for p in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class FedDraws(DRAEM):
    """DRAEM whose training batch is the fixture's (every random draw of the reference)."""

    def anomaly_batch(self, images: jax.Array, key: jax.Array, sources: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
        return TARGET, AUGMENTED, MASK


#: The step's host inputs (unused: :class:`FedDraws` feeds the reference's anomaly batch).
UNUSED_SOURCES = {"sources": jnp.zeros(TARGET.shape, jnp.uint8)}


def test_draem_forward_train_and_eval_mode():
    state = reference_state(METHOD)
    rec_net, seg_net = METHOD._nets()
    train = [batch_norm_in_train_mode(0.9)]
    p, s = state["params"], state["batch_stats"]

    @jax.jit
    def forward(x: jax.Array, rec_out: jax.Array) -> tuple[jax.Array, jax.Array]:
        (rec, _, _), _ = apply_with(rec_net, {"params": p["rec"], "batch_stats": s["rec"]}, x,
                                    interceptors=train, mutable=["batch_stats"])
        logits, _ = apply_with(seg_net, {"params": p["seg"], "batch_stats": s["seg"]},
                               jnp.concatenate([rec_out, x], -1), interceptors=train,
                               mutable=["batch_stats"])
        return rec, logits

    rec, logits = forward(AUGMENTED, jnp.asarray(FX.output("rec_train")))
    FX.close("forward reconstructive (train mode)", rec, FX.output("rec_train"))
    FX.close("forward discriminative (train mode)", logits, FX.output("seg_train"))
    rec_eval, probs = jax.jit(METHOD.reconstruct_and_segment)(state, TARGET)
    FX.close("forward reconstructive (eval mode)", rec_eval, FX.output("rec_eval"))
    FX.close("map", probs, FX.output("map"))


def test_draem_loss_gradients_and_one_adam_step():
    """One run of our jitted train step on the reference's draws: its loss terms, the
    gradient it computed (against the reference's float64 gradient), the Adam update and the
    new running statistics."""
    fed = FedDraws(rec_width=4, seg_width=4)
    optimizer = optax.chain(recording_gradients(), fed.optimizer(total_steps=1000))
    step = make_train_step(fed, optimizer)
    new, metrics = step(init_train_state(reference_state(METHOD), optimizer,
                                         jax.random.key(0)), TARGET, jax.random.key(1),
                        host=UNUSED_SOURCES)
    for term in ("l2", "ssim", "focal", "loss"):
        FX.close(f"loss {term}", metrics[term], FX.output(term))
    grads, ref_grads = (flat(g) for g in (new.opt_state[0],
                                          reference_state(METHOD, "grads")["params"]))
    FX.close("gradients (whole vector, relative to the largest)",
             np.concatenate([np.ravel(g) for g in grads.values()]),
             np.concatenate([np.ravel(g) for g in ref_grads.values()]), whole_gradient_tol(FX))
    stepped = reference_state(METHOD, "stepped")
    FX.close("train step params (whole vector, relative to the largest)",
             np.concatenate([np.ravel(p) for p in flat(new.params).values()]),
             np.concatenate([np.ravel(p) for p in flat(stepped["params"]).values()]),
             GRADIENT_TOL)
    # Adam's first step is about -lr * sign(g): where g is rounding noise either sign is
    # right, so the optimiser itself is compared on the reference's own gradient.
    start = reference_state(METHOD)["params"]
    adam = fed.optimizer(total_steps=1000)
    updates, _ = adam.update(reference_state(METHOD, "grads")["params"], adam.init(start), start)
    FX.close("Adam step (from the reference gradient)", optax.apply_updates(start, updates),
             stepped["params"], GRADIENT_TOL)
    FX.close("running statistics after the step", new.batch_stats, stepped["batch_stats"])


def test_draem_image_score_authors_filter_and_scaled():
    state = reference_state(METHOD)
    assert METHOD.score_filter((64, 64)) == 5 and METHOD.score_filter((256, 256)) == 21
    authors = DRAEM(rec_width=4, seg_width=4, scale_filter=False)
    assert authors.score_filter((64, 64)) == 21
    FX.close("score (authors' 21 x 21 filter)", authors.score(state, TARGET).image,
             FX.output("score"))
    scores = METHOD.score(state, TARGET)
    FX.close("score (filter scaled to 5 x 5)", scores.image, FX.output("score_scaled"))
    FX.close("map", scores.maps, FX.output("map"))


def torch_shapes(variables: dict[str, Any], module_key) -> dict[str, list[int]]:
    """``{torch name: torch shape}`` of a Flax variable tree (conv kernels ``[O, I, kh, kw]``,
    dense ``[out, in]``)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        names = tuple(p.key for p in path)
        shape = list(leaf.shape)
        if len(shape) == 4:
            shape = [shape[3], shape[2], shape[0], shape[1]]
        elif len(shape) == 2:
            shape = shape[::-1]
        out[f"{module_key(names[1:-1])}.{TORCH_LEAF_NAMES[names[-1]]}"] = shape
    return out


@pytest.mark.parametrize("sspcab", [False, True], ids=["draem", "draem+sspcab"])
def test_draem_full_width_parameter_tree(sspcab):
    tree = parameter_tree("draem_sspcab" if sspcab else "draem")
    shapes = template(DRAEM(sspcab=sspcab))
    ours = {}
    for net, key in (("rec", rec_key(sspcab)), ("seg", seg_key)):
        ours.update({f"{net}.{k}": v for k, v in torch_shapes(
            {"params": shapes["params"][net], "batch_stats": shapes["batch_stats"][net]},
            key).items()})
    assert ours == tree["shapes"]
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
    assert count == tree["parameter_count"]
