"""CutPaste against the unofficial PyTorch port ``Runinho/pytorch-cutpaste``
(``experiments/parity/cutpaste.py``; the authors' code is TensorFlow): the projection head in
training mode, the 3-way cross-entropy, its gradients, one SGD step with the reference's
settings, the Ledoit-Wolf / Mahalanobis density score and the full-width head's tree. The
ResNet-18 backbone and the CutPaste patches are not part of this fixture (see the script)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax.methods.self_supervised.cutpaste import CutPaste, ProjectionHead
from anomjax.methods.self_supervised.gaussian_density import distance, fit_gaussian
from tests.parity.parity_harness import GRADIENT_TOL, Fixture, parameter_tree
from tests.parity.test_parity_draem import flat, torch_shapes

FX = Fixture("cutpaste")
WIDTHS = (64,) * 8 + (16,)
METHOD = CutPaste(head_widths=WIDTHS)
EMBEDDINGS, LABELS = jnp.asarray(FX.input("embeddings")), jnp.asarray(FX.input("labels"))


def head_key(widths: tuple[int, ...]):
    """``Dense_i`` / ``BatchNorm_i`` -> ``head.{3i}`` / ``head.{3i + 1}``; the last Dense ->
    ``out``."""

    def key(names: tuple[str, ...]) -> str:
        kind, index = names[0].rsplit("_", 1)
        i = int(index)
        if kind == "Dense" and i == len(widths):
            return "out"
        return f"head.{3 * i + (kind == 'BatchNorm')}"

    return key


def head_variables(group: str = "weights") -> dict[str, Any]:
    shapes = jax.eval_shape(ProjectionHead(WIDTHS).init, jax.random.key(0), EMBEDDINGS)
    if group == "grads":
        shapes = {"params": shapes["params"]}
    return FX.variables(shapes, head_key(WIDTHS), group)


def test_cutpaste_head_loss_gradients_and_one_sgd_step():
    v = head_variables()

    def loss(params: Any) -> tuple[jax.Array, jax.Array]:
        logits, _ = METHOD.head(params, v["batch_stats"], EMBEDDINGS, train=True)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, LABELS)), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(v["params"])
    FX.close("head forward (train mode)", logits, FX.output("logits"))
    FX.close("loss (3-way cross-entropy)", value, FX.output("loss"))
    ours, ref = flat(grads), flat(head_variables("grads")["params"])
    # A Linear bias followed by train-mode BatchNorm has a zero gradient in exact arithmetic:
    # those are compared with the whole gradient, every other tensor on its own.
    fed = {k for k in ours if k.startswith("Dense_") and k.endswith("/bias")
           and not k.startswith(f"Dense_{len(WIDTHS)}/")}
    FX.close("gradients", {k: ours[k] for k in ours if k not in fed},
             {k: ref[k] for k in ref if k not in fed}, GRADIENT_TOL)
    FX.close("gradients (whole vector, relative to the largest)",
             np.concatenate([np.ravel(g) for g in ours.values()]),
             np.concatenate([np.ravel(g) for g in ref.values()]), GRADIENT_TOL)
    sgd = METHOD.optimizer(total_steps=1000)
    updates, _ = sgd.update(grads, sgd.init(v["params"]), v["params"])
    FX.close("SGD step (lr 0.03, momentum 0.9, weight decay 3e-5)",
             optax.apply_updates(v["params"], updates), head_variables("stepped")["params"],
             GRADIENT_TOL)


def test_cutpaste_density_score():
    gaussian = fit_gaussian(jnp.asarray(FX.input("density_train")))
    FX.close("score (Mahalanobis distance, Ledoit-Wolf)",
             distance(gaussian, jnp.asarray(FX.input("density_test"))), FX.output("distances"))


def test_cutpaste_full_width_head_tree():
    """Our default head (``[512] * 8 + [128]``, 3 classes) on the reference's 512-d ResNet-18
    embedding."""
    widths = tuple(CutPaste().head_widths)
    shapes = jax.eval_shape(ProjectionHead(widths).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((2, 512), jnp.float32))
    tree = parameter_tree("cutpaste")
    assert torch_shapes(shapes, head_key(widths)) == tree["shapes"]
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])) == \
        tree["parameter_count"]
