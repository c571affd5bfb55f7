"""K members in one vmapped step equal K separate models (a trained toy and a fit method)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.methods import make_method
from anomjax.methods.population import Population, member_state
from anomjax.train import init_train_state, make_train_step
from anomjax.types import Batch
from tests.train.train_toy import ToyConvAE

pytestmark = pytest.mark.slow


def _images(seed: int, n: int = 2, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _copy(tree):
    return jax.tree.map(jnp.array, tree)  # own buffers: each train state is donated


def _assert_vmapped_steps_equal_separate_steps(method, size: int, image_size: int, steps: int,
                                               rtol: float, atol: float,
                                               frozen_shared: bool) -> None:
    """``steps`` population steps equal ``steps`` steps of each member on its own (same
    initial state, batches, and member key ``fold_in(step key, i)``)."""
    population = Population(method, size=size)
    state = population.init(jax.random.key(1), _images(0, size=image_size))
    # A carried entry equal in every member is stored once, one that differs per member.
    assert "frozen" in (state["shared"] if frozen_shared else state["members"])
    members = [member_state(state, i) for i in range(size)]
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(members[0]["params"]),
                                                     jax.tree.leaves(members[1]["params"]),
                                                     strict=True))
    opt, pop_opt = method.optimizer(10), population.optimizer(10)
    pop_ts = init_train_state(_copy(state), pop_opt, jax.random.key(2))
    single_ts = [init_train_state(_copy(m), opt, jax.random.key(2)) for m in members]
    pop_step, single_step = make_train_step(population, pop_opt), make_train_step(method, opt)
    for t in range(steps):
        batch, key = jnp.asarray(_images(10 + t, size=image_size)), jax.random.key(100 + t)
        pop_ts, metrics = pop_step(pop_ts, batch, key)
        losses = []
        for i in range(size):
            single_ts[i], m = single_step(single_ts[i], batch, jax.random.fold_in(key, i))
            losses.append(float(m["loss"]))
        np.testing.assert_allclose([float(metrics[f"loss_member{i}"]) for i in range(size)],
                                   losses, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["loss"]), sum(losses), rtol=1e-5)
    for i in range(size):
        got = jax.tree.map(lambda x, i=i: x[i], (pop_ts.params, pop_ts.batch_stats))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
                     got, (single_ts[i].params, single_ts[i].batch_stats))


def test_vmapped_steps_equal_separate_steps():
    """The engine's toy (params, running statistics, a per-member random frozen entry, a
    noisy loss that uses its key)."""
    _assert_vmapped_steps_equal_separate_steps(ToyConvAE(), size=3, image_size=8, steps=4,
                                               rtol=1e-5, atol=1e-7, frozen_shared=False)


def test_population_of_a_fit_method_equals_separate_fits():
    method = make_method("padim", n_features=20)  # a random channel subset per member
    population = Population(method, size=3)
    images = _images(3, n=6)
    batches = [Batch(images=images[i:i + 3], labels=np.zeros(3, np.int32),
                     masks=np.zeros((3, 32, 32), np.uint8), paths=("a", "b", "c"),
                     defect_types=("good",) * 3) for i in (0, 3)]
    key = jax.random.key(4)
    state = population.fit(key, iter(batches))
    test = jnp.asarray(_images(5, n=2))
    scores = jax.jit(population.member_scores)(state, test)
    for i, k in enumerate(population.member_keys(key)):
        alone = method.fit(k, iter(batches))
        jax.tree.map(np.testing.assert_array_equal, member_state(state, i), alone)
        expect = jax.jit(method.score)(alone, test)
        np.testing.assert_allclose(scores.maps[i], expect.maps, rtol=1e-5, atol=1e-6)
    mean = jax.jit(population.score)(state, test)
    np.testing.assert_allclose(mean.image, np.mean(np.asarray(scores.image), axis=0),
                               rtol=1e-6)


def test_population_validates_its_size():
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        Population(make_method("padim"), size=0)
