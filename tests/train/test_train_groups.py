"""Several parameter groups in one jitted step: order of the updates, phases, ``every``,
resume, divergence and bfloat16, against hand-computed SGD and Adam steps."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import chex
import jax
import numpy as np
import optax
import pytest
from groups_toy import ToyGroups
from train_toy import toy_split

from anomjax.train import GroupedOptimizer, Phase, TrainingDiverged, Update, train_method
from anomjax.train.loop import _run_keys
from anomjax.train.state import init_train_state
from anomjax.train.step import make_train_step


def _steps(method, n_steps, seed=0):
    """The params after each of ``n_steps`` steps of the jitted step on one fixed batch."""
    images = toy_split(n=4).images
    init_key, _, step_key = _run_keys(jax.random.key(seed))
    opt = method.optimizer(10)
    ts = init_train_state(method.init(init_key, images), opt, step_key)
    start = jax.tree.map(np.asarray, ts.params)
    step = make_train_step(method, opt)
    out, metrics = [], []
    for s in range(n_steps):
        ts, m = step(ts, images, jax.random.fold_in(ts.key, s))
        out.append(jax.tree.map(np.asarray, ts.params))
        metrics.append(jax.device_get(m))
    return start, out, metrics, float(np.mean(images)), ts


def test_updates_run_in_order_and_phases_switch_at_their_step():
    lr = 0.1
    start, params, metrics, m, ts = _steps(ToyGroups(lr=lr, switch=2), 3)
    a, b, c = start["a"], start["b"], start["c"]
    for s in range(2):  # phase 0: a, then b with the new a; c untouched
        # The a-update hands its input a to the b-update ("carry").
        np.testing.assert_allclose(metrics[s]["a_before_sum"], a.sum(), rtol=1e-5)
        a = a - lr * (2 * (a - b) + m)
        b = b - lr * 2 * (b - 2 * a)
        np.testing.assert_allclose(params[s]["a"], a, rtol=1e-5)
        np.testing.assert_allclose(params[s]["b"], b, rtol=1e-5)
        np.testing.assert_array_equal(params[s]["c"], 0)
        assert metrics[s]["phase"] == 0 and metrics[s]["loss_c"] == 0
        np.testing.assert_allclose(metrics[s]["loss"], metrics[s]["loss_a"]
                                   + metrics[s]["loss_b"], rtol=1e-6)
        np.testing.assert_allclose(metrics[s]["image_mean"], m, rtol=1e-6)
    c = c - lr * 2 * (c - a)  # phase 1: only c moves
    np.testing.assert_allclose(params[2]["c"], c, rtol=1e-5)
    np.testing.assert_array_equal(params[2]["a"], params[1]["a"])
    assert metrics[2]["phase"] == 1 and metrics[2]["loss_a"] == 0
    assert metrics[2]["seen"] == 2  # batch_stats updated by the first two steps' a-updates
    assert int(ts.step) == 3


@dataclasses.dataclass(frozen=True)
class AdamGroups(ToyGroups):
    """``ToyGroups`` with Adam (a stateful optimiser) for every group."""

    name: ClassVar[str] = "toy_adam_groups"

    def optimizer(self, total_steps):
        grouped = super().optimizer(total_steps)
        return dataclasses.replace(grouped, optimizers={g: optax.adam(self.lr)
                                                        for g in grouped.optimizers})


def _numpy_adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (Kingma & Ba, Algorithm 1) as a closure ``(params, grad) -> params``."""
    moments = {"m": 0.0, "v": 0.0, "t": 0}

    def step(p, g):
        moments["t"] += 1
        moments["m"] = b1 * moments["m"] + (1 - b1) * g
        moments["v"] = b2 * moments["v"] + (1 - b2) * g * g
        m_hat = moments["m"] / (1 - b1 ** moments["t"])
        v_hat = moments["v"] / (1 - b2 ** moments["t"])
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)

    return step


def test_every_skips_the_update_and_keeps_its_optimiser_state():
    """With Adam, a skipped update must leave its moments and step count alone: ``b`` (every
    2nd step) follows a two-step Adam over steps 1 and 3, not a four-step one."""
    lr = 0.1
    start, params, metrics, m, ts = _steps(AdamGroups(lr=lr, switch=10, b_every=2), 4)
    a, b = start["a"].astype(np.float64), start["b"].astype(np.float64)
    adam_a, adam_b = _numpy_adam(lr), _numpy_adam(lr)
    for s in range(4):
        a = adam_a(a, 2 * (a - b) + m)
        if s % 2 == 1:
            b = adam_b(b, 2 * (b - 2 * a))
        else:
            assert metrics[s]["loss_b"] == 0 and metrics[s]["grad_norm_b"] == 0
        np.testing.assert_allclose(params[s]["a"], a, rtol=1e-5)
        np.testing.assert_allclose(params[s]["b"], b, rtol=1e-5)
    assert int(ts.opt_state["b"][0].count) == 2 and int(ts.opt_state["a"][0].count) == 4


def test_bad_declarations_are_refused():
    loss = ToyGroups().loss_a
    with pytest.raises(ValueError, match="trains group 'x', which has no optimiser"):
        GroupedOptimizer({"a": None}, (Phase((Update("u", "x", loss),)),))
    with pytest.raises(ValueError, match="increasing 'until'"):
        GroupedOptimizer({"a": None}, (Phase((Update("u", "a", loss),)),
                                       Phase((Update("v", "a", loss),))))
    with pytest.raises(ValueError, match="update names repeat"):
        GroupedOptimizer({"a": None}, (Phase((Update("u", "a", loss), Update("u", "a", loss))),))


def _train(run_dir=None, **kw):
    kw.setdefault("epochs", 2)
    method = kw.pop("method", ToyGroups(switch=5))
    return train_method(method, jax.random.key(0), toy_split(), batch_size=4, run_dir=run_dir,
                        num_workers=0, disable=True, **kw)


def test_resume_across_the_phase_boundary_is_bit_identical(tmp_path):
    straight = _train()
    _train(tmp_path, epochs=1)  # 4 steps, phase 0 only
    resumed = _train(tmp_path, epochs=2, resume=True)  # steps 5-8: crosses step 5
    chex.assert_trees_all_equal(straight, resumed)
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["train/phase"] for ln in lines] == [0] * 5 + [1] * 3
    assert {"train/loss_a", "train/grad_norm_b", "train/loss_c"} <= set(lines[0])


def test_a_diverging_group_stops_the_run(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step \d+"):
        _train(tmp_path, epochs=100, method=ToyGroups(lr=5.0, switch=10_000))


def test_bfloat16_compute_keeps_float32_params():
    state = _train(compute_dtype="bfloat16")
    assert state["params"]["a"].dtype == np.float32
    np.testing.assert_allclose(state["params"]["c"], _train()["params"]["c"], atol=0.05)
