"""Uninformed Students against an independent implementation of the paper (no public code
exists; fixture written by ``experiments/parity/uninformed_students.py``, plain PyTorch from
the paper's equations): scales 17, 33 and 65, two students each, widths 8/16, 40 px images.

Compared: every teacher's dense descriptors (the patch centred on every pixel), their
normalisation statistics, the students' mean prediction, the loss, the gradient of every
student parameter (first rows), the parameters after one Adam step of our real train step,
the optimiser over three steps of fixed gradients, the calibration statistics and the map and
image score of held-out images. The teacher's pretraining is not compared (see
``experiments/parity/distillation.md``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from distillation_parity import close_adam_step, close_optimizer_trace, close_rows
from parity_harness import GRADIENT_TOL, Fixture

from anomjax.methods import make_method
from anomjax.methods.distillation.uninformed_students import _descriptor_stats, dense_descriptors
from anomjax.train import init_train_state, make_train_step
from anomjax.types import Batch

SCALES = (17, 33, 65)
STUDENTS = 2


def conv_key(path: tuple[str, ...]) -> str:
    return path[0]  # the reference names its layers conv<i> as the paper's tables list them


@pytest.fixture(scope="module")
def setup():
    fx = Fixture("uninformed_students")
    method = make_method("uninformed_students", patch_sizes=SCALES, students=STUDENTS,
                         width=8, descriptor_dim=16)
    train = jnp.asarray(fx.input("train"))
    teachers, students, means, stds = {}, {}, {}, {}
    for p in SCALES:
        s, net = f"p{p}", method._net(p)
        template = jax.eval_shape(lambda net=net: net.init(jax.random.key(0),
                                                           jnp.zeros((1, 60, 60, 3))))
        template = {"params": template["params"]}
        teachers[s] = fx.variables(template, conv_key, prefix=f"teacher.{s}.")["params"]
        members = [fx.variables(template, conv_key, prefix=f"students.{s}.{i}.")["params"]
                   for i in range(STUDENTS)]
        students[s] = jax.tree.map(lambda *a: jnp.stack(a), *members)
        means[s], stds[s] = _descriptor_stats(net, teachers[s], [np.asarray(train)])
    frozen = {"teacher": teachers, "teacher_mean": means, "teacher_std": stds}
    for stat, value in (("error_mean", 0.0), ("error_std", 1.0), ("variance_mean", 0.0),
                        ("variance_std", 1.0)):
        frozen[stat] = {f"p{p}": jnp.full((), value, jnp.float32) for p in SCALES}
    return fx, method, {"params": students, "frozen": frozen}, train


def _torch_names(tree: dict, prefix: str = "students") -> dict[str, np.ndarray]:
    """Stacked student params ``{p<s>: {conv<i>: {kernel, bias}}}`` -> reference names."""
    out = {}
    for s, layers in tree.items():
        for i in range(STUDENTS):
            for layer, leaves in layers.items():
                out[f"{prefix}.{s}.{i}.{layer}.weight"] = np.asarray(
                    leaves["kernel"][i]).transpose(3, 2, 0, 1)
                out[f"{prefix}.{s}.{i}.{layer}.bias"] = np.asarray(leaves["bias"][i])
    return {k.removeprefix(f"{prefix}."): v for k, v in out.items()}


def test_teachers_students_loss_gradients_and_step(setup):
    fx, method, state, train = setup
    for p in SCALES:
        s, net = f"p{p}", method._net(p)
        fx.close(f"teacher {s} dense descriptors",
                 dense_descriptors(net, state["frozen"]["teacher"][s], train),
                 fx.output(f"teacher_{s}"))
        fx.close(f"teacher {s} descriptor mean", state["frozen"]["teacher_mean"][s],
                 fx.output(f"teacher_mean_{s}"))
        # A random teacher's descriptors vary little across pixels (std ~ mean / 100 at p65):
        # float32 rounding of the descriptors weighs ~100x more on their std.
        fx.close(f"teacher {s} descriptor std", state["frozen"]["teacher_std"][s],
                 fx.output(f"teacher_std_{s}"), GRADIENT_TOL)
        preds = [dense_descriptors(net, jax.tree.map(lambda a, i=i: a[i], state["params"][s]),
                                   train) for i in range(STUDENTS)]
        fx.close(f"students {s} mean prediction", jnp.mean(jnp.stack(preds), axis=0),
                 fx.output(f"student_mean_{s}"))

    key = jax.random.key(0)
    (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state["params"], state, train, key)
    fx.close("loss", loss, fx.output("loss"))
    close_rows(fx, "gradients", "grads", _torch_names(grads))

    optimizer = method.optimizer(1)
    train_state, metrics = make_train_step(method, optimizer)(
        init_train_state(jax.tree.map(jnp.copy, state), optimizer, key), train, key)
    fx.close("loss (train step)", metrics["loss"], fx.output("loss"))
    close_adam_step(fx, "Adam step (params)", _torch_names(train_state.params),
                    fx.group("stepped"))
    close_optimizer_trace(fx, method.optimizer(3))


def test_calibration_map_and_image_score(setup):
    fx, method, state, train = setup
    n = len(train)
    batch = Batch(images=np.asarray(train), labels=np.zeros(n, np.int32),
                  masks=np.zeros(train.shape[:3], np.uint8), paths=["a"] * n,
                  defect_types=["good"] * n)
    calibrated = method.calibrate(state, [batch])
    frozen = calibrated["frozen"]
    for p in SCALES:
        s = f"p{p}"
        fx.close(f"calibration {s} (error mean, std, variance mean, std)",
                 jnp.stack([frozen["error_mean"][s], frozen["error_std"][s],
                            frozen["variance_mean"][s], frozen["variance_std"][s]]),
                 fx.output(f"calibration_{s}"))
    scores = method.score(calibrated, jnp.asarray(fx.input("test")))
    fx.close("anomaly map", scores.maps, fx.output("maps"))
    fx.close("image score", scores.image, fx.output("image_scores"))
