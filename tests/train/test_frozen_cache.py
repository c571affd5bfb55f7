"""Frozen features cached once per training image: values, limits and training through it."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.methods.population import Population
from anomjax.train import train_method
from anomjax.train.frozen_cache import build_frozen_cache
from tests.train.train_toy import ArraySplit, ToyConvAE, toy_split


@dataclasses.dataclass(frozen=True)
class ToyWithFrozenTarget(ToyConvAE):
    """Denoises towards a frozen projection of the image, which the engine may cache."""

    name: ClassVar[str] = "toy_frozen_target"

    def frozen_features(self, state: dict, images: jax.Array) -> dict:
        target = jnp.einsum("bhwc,cd->bhwd", images, state["frozen"]["proj"],
                            precision=jax.lax.Precision.HIGHEST)
        return {"target": target, "mean": jnp.mean(images, axis=(1, 2, 3))}

    def loss(self, params: dict, state: dict, images: jax.Array, key: jax.Array,
             frozen: dict | None = None):
        used_cache = frozen is not None  # decided when the step is traced
        frozen = self.frozen_features(state, images) if frozen is None else frozen
        noisy = images + self.noise * jax.random.normal(key, images.shape, images.dtype)
        err = jnp.mean((self._apply(params, state, noisy) - frozen["target"]) ** 2)
        return err, {"cached": jnp.asarray(float(used_cache)),
                     "image_mean": jnp.mean(frozen["mean"])}


def test_cache_holds_each_images_features_by_path_with_a_padded_last_batch():
    split = toy_split(n=5)
    method = ToyWithFrozenTarget()
    state = method.init(jax.random.key(0), split.images[:2])
    cache = build_frozen_cache(method, state, split, 2, limit_mb=1.0, num_workers=0)
    proj = np.asarray(state["frozen"]["proj"], np.float64)
    paths = ("img4", "img0", "img4", "img2")  # the padded last batch holds img4
    got = cache.lookup(paths)
    idx = [int(p[3:]) for p in paths]
    np.testing.assert_allclose(got["target"], split.images[idx].astype(np.float64) @ proj,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["mean"], split.images[idx].mean(axis=(1, 2, 3)), rtol=1e-6)
    assert cache.nbytes == 5 * (8 * 8 * 3 + 1) * 4
    with pytest.raises(KeyError, match="img9"):
        cache.lookup(("img9",))


def test_no_cache_without_frozen_features_over_the_limit_or_with_shared_paths():
    split = toy_split(n=4)
    state = ToyWithFrozenTarget().init(jax.random.key(0), split.images[:2])
    assert build_frozen_cache(ToyConvAE(), state, split, 2, limit_mb=1.0, num_workers=0) is None
    assert build_frozen_cache(ToyWithFrozenTarget(), state, split, 2, limit_mb=0,
                              num_workers=0) is None
    with pytest.warns(UserWarning, match="over the cache limit"):
        assert build_frozen_cache(ToyWithFrozenTarget(), state, split, 2, limit_mb=1e-4,
                                  num_workers=0) is None

    class SamePaths(ArraySplit):
        def batches(self, *args, **kwargs):
            for batch in super().batches(*args, **kwargs):
                yield dataclasses.replace(batch, paths=("same",) * len(batch))

    with pytest.warns(UserWarning, match="share the path"):
        assert build_frozen_cache(ToyWithFrozenTarget(), state, SamePaths(split.images), 2,
                                  limit_mb=1.0, num_workers=0) is None


def _cached_equals_plain(method, split, tmp_path, *, epochs: int) -> tuple[list, list]:
    """Train ``method`` through the frozen-feature cache and without it; assert every step
    used the cache (or not) and the params agree; return both runs' metrics lines."""
    def run(name: str, limit_mb: float) -> tuple[dict, list[dict]]:
        state = train_method(method, jax.random.key(1), split, epochs=epochs, batch_size=4,
                             run_dir=tmp_path / name, num_workers=0, frozen_cache_mb=limit_mb,
                             disable=True)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return state, [json.loads(line) for line in lines]

    cached, cached_log = run("cached", 1.0)
    plain, plain_log = run("plain", 0)
    assert {row["train/cached"] for row in cached_log} == {1.0}
    assert {row["train/cached"] for row in plain_log} == {0.0}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 cached["params"], plain["params"])
    return cached_log, plain_log


def test_training_through_the_cache_equals_computing_the_features_every_step(tmp_path):
    split = toy_split(n=12)
    method = ToyWithFrozenTarget()

    cached_log, plain_log = _cached_equals_plain(method, split, tmp_path, epochs=3)
    # Each step's batch got its own images' features (the mean of the batch's pixels).
    np.testing.assert_allclose([r["train/image_mean"] for r in cached_log],
                               [r["train/image_mean"] for r in plain_log], rtol=1e-6)


@pytest.mark.parametrize("frozen_cache_mb", [0.0, 2048.0])
def test_the_step_compiled_ahead_is_the_one_training_runs(frozen_cache_mb, caplog):
    """The step is compiled in the background (overlapping the cache pass) with the shapes
    and shardings of the real calls: compiled exactly once, in that thread, with or without
    a cache."""
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level("WARNING", logger="jax._src.dispatch"):
            train_method(ToyWithFrozenTarget(noise=0.125), jax.random.key(5), toy_split(n=8),
                         epochs=2, batch_size=4, num_workers=0, frozen_cache_mb=frozen_cache_mb,
                         disable=True)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [r for r in caplog.records
                if r.getMessage().startswith("Finished XLA compilation of jit(train_step)")]
    assert len(compiled) == 1, [r.getMessage() for r in compiled]
    assert compiled[0].threadName.startswith("compile")  # ahead, not at the first step


@dataclasses.dataclass(frozen=True)
class SharedTeacher(ToyWithFrozenTarget):
    """The frozen projection does not depend on the key: equal in every population member."""

    name: ClassVar[str] = "toy_shared_teacher"

    def init(self, key: jax.Array, images: jax.Array) -> dict:
        state = super().init(key, images)
        return {**state, "frozen": {"proj": jax.random.normal(jax.random.key(7), (3, 3))}}


@pytest.mark.parametrize("member, layout", [(SharedTeacher(), "shared"),
                                            (ToyWithFrozenTarget(), "per_member")])
def test_a_population_uses_the_frozen_feature_cache_like_a_single_run(tmp_path, member, layout):
    """The population forwards ``frozen_features``: a teacher shared by the members is cached
    once ([N, ...]), one that differs per member once per member ([N, K, ...]); either way
    training through the cache equals computing the features at every step, and every
    member's loss received the cached features."""
    split = toy_split(n=8)
    population = Population(member, size=2)
    state = population.init(jax.random.key(0), split.images[:4])
    cache = build_frozen_cache(population, state, split, 4, limit_mb=1.0, num_workers=0)
    assert set(cache.features) == {layout}
    shape = (8, 8, 8, 3) if layout == "shared" else (8, 2, 8, 8, 3)
    assert cache.features[layout]["target"].shape == shape
    proj = np.asarray(state["shared" if layout == "shared" else "members"]["frozen"]["proj"],
                      np.float64)
    images = split.images.astype(np.float64)
    expected = (images @ proj if layout == "shared" else
                np.stack([images @ p for p in proj], axis=1))
    np.testing.assert_allclose(cache.features[layout]["target"], expected, rtol=1e-5, atol=1e-6)

    _cached_equals_plain(population, split, tmp_path, epochs=2)
