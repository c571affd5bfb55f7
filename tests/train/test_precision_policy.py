"""The precision policy (:mod:`anomjax.precision`), read off the compiled graphs: the engine's
train step of each family requests no ``HIGHEST`` product, a score's deciding products do,
and ``compute_dtype="bfloat16"`` keeps the BatchNorm statistics float32 (grouped and
single-optimiser steps)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.methods.flows.fastflow import FastFlow
from anomjax.methods.generative.ganomaly import GANomaly
from anomjax.methods.reconstruction.autoencoder import AE
from anomjax.methods.self_supervised.riad import RIAD
from anomjax.train.loop import run_optimizer
from anomjax.train.state import init_train_state
from anomjax.train.step import make_train_step

PRODUCT = re.compile(r"stablehlo\.(?:convolution|dot_general)\b.*")
IMAGES = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
METHODS = {
    "ae": AE(width=8, latent=16),  # a plain network
    "fastflow": FastFlow(taps=("stage2", "stage3"), flow_steps=2),  # flows
    "riad": RIAD(width=4, depth=3, cell_sizes=(4, 8)),  # self-supervised (DRAEM's U-Net)
    "ganomaly": GANomaly(width=4, latent=8),  # the grouped-optimiser step
}


def products(text: str) -> tuple[int, int]:
    """``(all, at HIGHEST)``: convolutions and dot products in a StableHLO module."""
    found = PRODUCT.findall(text)
    return len(found), sum("HIGHEST" in line for line in found)


def train_state(method, images=IMAGES):
    state = method.init(jax.random.key(1), images)
    return init_train_state(state, run_optimizer(method, 4), jax.random.key(2))


@pytest.mark.parametrize("name", list(METHODS))
def test_train_step_at_default_precision_and_score_at_highest(name):
    method = METHODS[name]
    ts = train_state(method)
    step = make_train_step(method, run_optimizer(method, 4))
    total, highest = products(step.lower(ts, IMAGES, jax.random.key(3)).as_text())
    assert total > 0 and highest == 0, f"{name}: {highest} of {total} train products at HIGHEST"
    state = {**ts.extra, "params": ts.params}
    if ts.batch_stats is not None:
        state["batch_stats"] = ts.batch_stats
    total, highest = products(jax.jit(method.score).lower(state, IMAGES).as_text())
    if name == "fastflow":  # the frozen encoder at the default; every subnet at HIGHEST
        assert highest >= 2 * 2 * 2 and highest < total
    else:  # the networks decide the scores: every product at HIGHEST
        assert highest == total > 0


@pytest.mark.parametrize("name", ["ganomaly", "riad"])
def test_bfloat16_steps_keep_batch_statistics_float32(name):
    """Running statistics off by ``delta`` (below bfloat16's resolution at 1.0) must come
    back still off by ``momentum^k delta`` (k updates of the statistics): a bfloat16 round
    trip would erase the difference."""
    method, delta = METHODS[name], 2.0 ** -10
    step = make_train_step(method, run_optimizer(method, 4), compute_dtype="bfloat16")
    new = []
    for offset in (0.0, delta):
        ts = train_state(method)
        ts = ts.replace(batch_stats=jax.tree.map(lambda s, o=offset: jnp.full_like(s, 1.0 + o),
                                                 ts.batch_stats))
        ts, _ = step(ts, IMAGES, jax.random.key(3))
        new.append(ts.batch_stats)
    leaves = [(a, b) for a, b in zip(*map(jax.tree.leaves, new), strict=True)]
    assert leaves and all(a.dtype == b.dtype == jnp.float32 for a, b in leaves)
    for a, b in leaves:
        ratio = np.asarray(b - a, np.float64) / delta  # momentum 0.9, k updates: 0.9^k
        assert np.all(ratio > 0.1), "the statistics went through bfloat16"
        k = np.round(np.log(ratio) / np.log(0.9))
        np.testing.assert_allclose(ratio, 0.9 ** k, rtol=2e-3)
