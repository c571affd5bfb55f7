"""Every matrix product and convolution that decides a feature-modeling score runs at
``Precision.HIGHEST``: on GPUs (TF32) and TPUs (bfloat16) the default would change the scores.

Checked on the CPU by tracing (``jax.make_jaxpr``) each method's ``score``, and the fitting
steps that shape the model, with abstract inputs, and inspecting every ``dot_general`` and
``conv_general_dilated`` outside the frozen backbone (its forward pass, ``jit`` named
``apply``, is out of scope: its features are the methods' input).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from anomjax.backbones import load_backbone
from anomjax.methods.feature_modeling.padim import PaDiM, SemiOrthogonalPaDiM
from anomjax.methods.feature_modeling.patchcore import PatchCore, _project
from anomjax.methods.feature_modeling.spade import SPADE
from anomjax.nn import gaussian

HIGHEST = jax.lax.Precision.HIGHEST
PRODUCTS = ("dot_general", "conv_general_dilated")


def products(jaxpr: jax.extend.core.Jaxpr) -> list[tuple[str, object]]:
    """``(primitive, precision)`` of every product in ``jaxpr`` and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in PRODUCTS:
            found.append((eqn.primitive.name, eqn.params.get("precision")))
        if eqn.primitive.name in ("jit", "pjit") and eqn.params.get("name") == "apply":
            continue  # the frozen backbone
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += products(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += products(sub)
    return found


def assert_highest(fn, *args) -> list[str]:
    found = products(jax.make_jaxpr(fn)(*args).jaxpr)
    assert found, "no product traced: the check would be empty"
    low = [(name, p) for name, p in found if p not in (HIGHEST, (HIGHEST, HIGHEST))]
    assert not low, f"products below HIGHEST precision: {low}"
    return [name for name, _ in found]


def abstract(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.fixture(scope="module")
def variables():
    return load_backbone("efficientnet_lite0")[1]


IMAGES = abstract((2, 64, 64, 3))


@pytest.mark.parametrize("aggregation", ["patch", "mean"])
def test_patchcore_score_and_coreset_projection(variables, aggregation):
    method = PatchCore(aggregation=aggregation)
    basis = jnp.asarray(method.basis())
    state = {"backbone": variables, "basis": basis, "bank": abstract((50, basis.shape[1]))}
    names = assert_highest(method.score, state, IMAGES)
    # two layer convolutions, the kNN and Eq. 7's kNN matmuls, the two blur passes
    assert names.count("conv_general_dilated") == 4 and names.count("dot_general") >= 2
    assert_highest(_project, abstract((10, basis.shape[1])), abstract((basis.shape[1], 128)))


def test_padim_and_so_padim_scores_and_statistics(variables):
    mean, chol = abstract((16, 16, 7)), abstract((16, 16, 7, 7))
    padim = {"backbone": variables, "channel_index": abstract((7,), jnp.int32), "mean": mean,
             "inv_chol": chol}
    assert "dot_general" in assert_highest(PaDiM().score, padim, IMAGES)  # the whitening
    so = {"backbone": variables, "embedding": abstract((176, 7)), "mean": mean,
          "inv_chol": chol}
    assert assert_highest(SemiOrthogonalPaDiM().score, so, IMAGES).count("dot_general") >= 2
    stats = gaussian.init_stats((16, 16), 7)
    assert_highest(gaussian.update_stats, stats, abstract((4, 16, 16, 7)))


@pytest.mark.parametrize("pyramid", ["per_layer", "concatenated"])
def test_spade_score(variables, pyramid):
    method = SPADE(pyramid=pyramid, image_neighbours=3)
    if pyramid == "per_layer":
        train = {"stage2": abstract((5, 16, 16, 24), jnp.float16),
                 "stage3": abstract((5, 8, 8, 40), jnp.float16),
                 "stage5": abstract((5, 4, 4, 112), jnp.float16)}
    else:
        train = abstract((5, 16, 16, 176), jnp.float16)
    state = {"backbone": variables, "image_features": abstract((5, 1280)), "pyramid": train}
    names = assert_highest(method.score, state, IMAGES)
    assert names.count("dot_general") >= (4 if pyramid == "per_layer" else 2)
