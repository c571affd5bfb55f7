"""CFLOW-AD against the authors' code (gudovskiy/cflow-ad with FrEIA 0.2): positional
encoding, every coupling block, ``log p / C``, loss, gradients, the fibre mini-batch Adam
loop of one image batch, and the test-set-normalised map (``experiments/parity/cflow.py``).

The fixture's encoder features stand in for the encoder (its port is pinned by the backbone
tests): :class:`FixtureFeatures` returns them as ``frozen_features``, so ``score`` and
``calibrate_test`` run unchanged. FrEIA's random rotations (``w_perm``) are the reference's
draws, handed to our decoders in place of ``random_rotation``'s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.backbones.convert import torch_to_flax
from anomjax.methods.flows import cflow as cflow_module
from anomjax.methods.flows.cflow import CFlow
from anomjax.methods.flows.common import all_in_one_flow
from anomjax.nn.flows import positional_encoding_2d
from anomjax.types import Batch
from tests.parity.parity_harness import GRADIENT_TOL, Fixture, parameter_tree

CHANNELS, SIDES, BLOCKS, IMAGE = (12, 9), (6, 3), 3, 24


@dataclasses.dataclass(frozen=True)
class FixtureFeatures(CFlow):
    """CFLOW whose encoder returns the fixture's features (``state["features"]``)."""

    def frozen_features(self, state, images):
        return list(state["features"])


METHOD = FixtureFeatures(taps=("layer2", "layer3"), condition_dim=16, coupling_blocks=BLOCKS,
                         clamp=1.9, fibre_batch=16, normalizer="test", align_corners=True,
                         learning_rate=2e-4, lr_schedule="constant")


@pytest.fixture(scope="module")
def fx() -> Fixture:
    return Fixture("cflow")


@pytest.fixture(autouse=True)
def reference_rotations(fx, monkeypatch):
    """Our decoders draw rotation ``k`` of level ``l`` with seed ``1000 l + k``: give them
    the reference's ``w_perm`` instead."""
    def rotation(seed: int, n: int) -> np.ndarray:
        w = fx.input(f"level{seed // 1000}/w_perm{seed % 1000}")
        assert w.shape == (n, n)
        return w

    monkeypatch.setattr(cflow_module, "random_rotation", rotation)


def decoder_params(fx: Fixture, group: str) -> dict:
    """Our ``params`` tree filled from the reference group (checked: every tensor once)."""
    out = {}
    for lv, c in enumerate(CHANNELS):
        sample = jnp.zeros((1, c - c // 2 + 16))
        template = {f"block{k}": jax.eval_shape(net.init, jax.random.key(0), sample)["params"]
                    for k, net in enumerate(METHOD._subnets(c))}
        level = {}
        for k in range(BLOCKS):
            ref = fx.group(group, f"level{lv}/block{k}/")
            assert set(ref) == {"subnet.0.weight", "subnet.0.bias", "subnet.2.weight",
                                "subnet.2.bias", "global_scale", "global_offset"}, sorted(ref)
            subnet = torch_to_flax(
                {"params": template[f"block{k}"]},
                {n: v for n, v in ref.items() if n.startswith("subnet.")},
                lambda path: {"fc0": "subnet.0", "out": "subnet.2"}[path[0]],
                f"cflow.npz:{group}/level{lv}/block{k}")["params"]
            level[f"block{k}"] = {"subnet": subnet, "scale": jnp.asarray(ref["global_scale"]),
                                  "offset": jnp.asarray(ref["global_offset"])}
        out[f"level{lv}"] = level
    return out


def features(fx: Fixture) -> list[jax.Array]:
    return [jnp.asarray(fx.input(f"level{lv}/features")) for lv in range(len(CHANNELS))]


def test_positional_encoding_blocks_and_log_prob(fx):
    params = decoder_params(fx, "weights")
    for lv, side in enumerate(SIDES):
        fx.close(f"positional encoding level{lv}", positional_encoding_2d(16, side, side),
                 fx.output(f"level{lv}/positional_encoding"))
    fibres, context = METHOD._fibres(features(fx)[0])
    x = fibres
    for k in range(BLOCKS):  # one all-in-one block at a time
        block = all_in_one_flow({"block0": params["level0"][f"block{k}"]},
                                METHOD._subnets(12)[:1], 12, 1.9,
                                [fx.input(f"level0/w_perm{k}")], context=context,
                                soft_permutation=True)
        x, log_det = block.forward_and_log_det(x)
        fx.close(f"block{k} output", x, fx.output(f"level0/block{k}/out"))
        fx.close(f"block{k} log-det", log_det, fx.output(f"level0/block{k}/log_det"))
    for lv, f in enumerate(features(fx)):
        fx.close(f"log p / C level{lv}", METHOD._log_prob(params, lv, *METHOD._fibres(f)),
                 fx.output(f"level{lv}/log_prob"))


def test_loss_and_gradients(fx):
    params = decoder_params(fx, "weights")
    state = {"params": params, "features": features(fx)}
    images = jnp.zeros((2, IMAGE, IMAGE, 3))

    def loss(p):
        return METHOD.loss(p, state, images, jax.random.key(0), frozen=features(fx))

    (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    fx.close("loss", value, fx.output("loss"))
    for lv in range(len(CHANNELS)):
        fx.close(f"loss level{lv}", aux[f"loss_level{lv}"], fx.output(f"level{lv}/loss"))
    fx.close("gradients", grads, decoder_params(fx, "grads"), GRADIENT_TOL)


def test_fibre_mini_batch_adam_loop(fx):
    """One image batch of ``train_meta_epoch``: per level, ``E // 16`` Adam updates on the
    reference's shuffled fibres (4 for level 0, 1 for level 1)."""
    params = decoder_params(fx, "weights")
    optimizer = METHOD.optimizer(10)
    opt_state = optimizer.init(params)
    lr = optimizer.learning_rate(opt_state["step"])
    new = {}
    for lv, f in enumerate(features(fx)):
        name = f"level{lv}"
        run = jax.jit(METHOD.fibre_updates, static_argnums=2)
        new[name], _, losses, _ = run(params[name], opt_state["levels"][name], lv,
                                      *METHOD._fibres(f),
                                      jnp.asarray(fx.input(f"{name}/fibre_perm")), lr)
        ref_losses = [fx.output(f"{name}/chunk{i}/loss") for i in range(losses.shape[0])]
        assert losses.shape[0] == (2 * SIDES[lv] ** 2) // 16
        fx.close(f"mini-batch losses {name}", losses, np.stack(ref_losses))
    stepped = decoder_params(fx, "stepped")
    fx.close("stepped params", new, stepped, GRADIENT_TOL)
    # the update itself (stepped - initial), not only the stepped values; both sides round
    # each step's parameters to float32, and one ulp of a global scale near 10 (1e-6) is
    # 1e-3 of its 4 updates of about 2e-4: hence 2e-3 here
    delta = jax.tree.map(jnp.subtract, new, params)
    fx.close("update (stepped - initial)", delta,
             jax.tree.map(jnp.subtract, stepped, params), 2 * GRADIENT_TOL)


def test_test_set_normalised_map_and_score(fx):
    params = decoder_params(fx, "weights")
    state = {"params": params, "features": features(fx), "frozen": {}}
    images = np.zeros((2, IMAGE, IMAGE, 3), np.float32)
    with pytest.raises(ValueError, match="no normaliser"):
        METHOD.score(state, jnp.asarray(images))
    batch = Batch(images=images, labels=np.zeros(2, np.int32),
                  masks=np.zeros((2, IMAGE, IMAGE), np.uint8), paths=("a", "b"),
                  defect_types=("good", "good"))
    state = METHOD.calibrate_test(state, [batch])
    fx.close("test-set maxima", state["reference"],
             np.stack([fx.output(f"level{lv}/test_max") for lv in range(len(CHANNELS))]))
    scores = METHOD.score(state, jnp.asarray(images))
    probability_sum = fx.output("probability_sum")
    # the authors' map is max - sum with the maximum over the test set: ours is -sum
    fx.close("map", scores.maps, -probability_sum)
    fx.close("image score", scores.image + probability_sum.max(), fx.output("image_score"))
    fx.close("map (authors' offset)", scores.maps + probability_sum.max(),
             fx.output("super_mask"))


def test_full_width_parameter_tree():
    """The paper's decoders (WRN50 ``layer2..layer4``, condition 128, 8 blocks): every tensor
    of the authors' three FrEIA decoders has our counterpart of the same shape, and the
    trainable counts agree."""
    tree = parameter_tree("cflow")
    method = CFlow(condition_dim=128, coupling_blocks=8)
    mapped, count = {}, 0
    for lv, c in enumerate((512, 1024, 2048)):
        sample = jnp.zeros((1, c - c // 2 + 128))
        for k, net in enumerate(method._subnets(c)):
            prefix = f"{lv}.module_list.{k}."
            shapes = jax.eval_shape(net.init, jax.random.key(0), sample)["params"]
            for layer, torch_layer in (("fc0", "subnet.0"), ("out", "subnet.2")):
                kernel, bias = shapes[layer]["kernel"].shape, shapes[layer]["bias"].shape
                mapped[f"{prefix}{torch_layer}.weight"] = [kernel[1], kernel[0]]
                mapped[f"{prefix}{torch_layer}.bias"] = list(bias)
                count += int(np.prod(kernel)) + int(np.prod(bias))
            mapped[f"{prefix}global_scale"] = mapped[f"{prefix}global_offset"] = [1, c]
            count += 2 * c  # our scale and offset [C]
    reference = {k: v for k, v in tree["shapes"].items() if "w_perm" not in k}
    assert mapped == reference
    fixed = sum(int(np.prod(v)) for k, v in tree["shapes"].items() if "w_perm" in k)
    assert count == tree["parameter_count"] - fixed
