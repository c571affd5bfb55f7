"""K members in one vmapped step equal K separate models (a trained toy and a fit method)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


@pytest.mark.parametrize("size", [0, 1025, True])
def test_population_validates_its_size(size):
    with pytest.raises(ValueError, match=r"size must be an integer in \[1, 1024\]"):
        Population(make_method("padim"), size=size)


@dataclasses.dataclass(frozen=True)
class ToyAdamW(ToyConvAE):
    """The toy with a ``learning_rate`` field, AdamW and a cosine schedule."""

    learning_rate: float = 0.01

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return optax.adamw(optax.cosine_decay_schedule(self.learning_rate, total_steps),
                           weight_decay=0.1)


@dataclasses.dataclass(frozen=True)
class ToySGD(ToyConvAE):
    """The toy with a ``learning_rate`` field and SGD with momentum."""

    learning_rate: float = 0.05

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return optax.sgd(self.learning_rate, momentum=0.9)


def _train_rate_population(method, rates, *, image_size: int, steps: int):
    """``steps`` steps of ``Population(method, learning_rates=rates)`` and of each member on
    its own as ``method`` at its rate (same initial state, batches and member keys).

    Returns the initial population state, both final train states and, per step, the
    population's loss and the members' losses."""
    population = Population(method, size=len(rates), learning_rates=rates)
    state = population.init(jax.random.key(1), _images(0, size=image_size))
    pop_opt = population.optimizer(10)
    pop_ts = init_train_state(_copy(state), pop_opt, jax.random.key(2))
    pop_step = make_train_step(population, pop_opt)
    alone = [dataclasses.replace(method, learning_rate=r) for r in rates]
    opts = [m.optimizer(10) for m in alone]
    single_ts = [init_train_state(_copy(member_state(state, i)), opt, jax.random.key(2))
                 for i, opt in enumerate(opts)]
    single_steps = [make_train_step(m, o) for m, o in zip(alone, opts, strict=True)]
    losses = []
    for t in range(steps):
        batch, key = jnp.asarray(_images(10 + t, size=image_size)), jax.random.key(100 + t)
        pop_ts, metrics = pop_step(pop_ts, batch, key)
        member_losses = []
        for i, step in enumerate(single_steps):
            single_ts[i], m = step(single_ts[i], batch, jax.random.fold_in(key, i))
            member_losses.append(float(m["loss"]))
        losses.append((float(metrics["loss"]), member_losses))
    return state, pop_ts, single_ts, losses


@pytest.mark.parametrize("method", [ToyAdamW(), ToySGD()], ids=["adamw_cosine", "sgd"])
def test_learning_rate_members_equal_separate_runs_at_their_rates(method):
    """Member i of a learning-rate population trains exactly as the method built with
    ``learning_rate = rates[i]`` does on its own (same initial state, batches, keys)."""
    rates = (0.002, method.learning_rate, 0.2)
    state, pop_ts, single_ts, _ = _train_rate_population(method, rates, image_size=8, steps=4)
    finals = []
    for i in range(3):
        got = jax.tree.map(lambda x, i=i: x[i], pop_ts.params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     got, single_ts[i].params)
        finals.append(np.asarray(single_ts[i].params["w"]))
    assert not np.allclose(finals[0] - np.asarray(state["params"]["w"][0]),
                           finals[2] - np.asarray(state["params"]["w"][2]))  # rates matter


def test_population_validates_its_learning_rates():
    with pytest.raises(ValueError, match="tuple of size=2"):
        Population(ToySGD(), size=2, learning_rates=(0.1,))
    with pytest.raises(ValueError, match="finite number > 0"):
        Population(ToySGD(), size=2, learning_rates=(0.1, float("nan")))
    with pytest.raises(ValueError, match="no learning_rate field"):
        Population(ToyConvAE(), size=2, learning_rates=(0.1, 0.2))


SHARDED_RUN = """
import sys, jax, numpy as np
sys.path.insert(0, {train_dir!r})
from train_toy import ToyConvAE, toy_split
from anomjax.methods.population import Population
from anomjax.train import train_method
assert jax.device_count() == 4, jax.devices()
out = {{}}
for shard in (False, True):
    pop = Population(ToyConvAE(), size=4, shard_members=shard)
    state = train_method(pop, jax.random.key(3), toy_split(n=16), epochs=2, batch_size=8,
                         num_workers=0, disable=True)
    w = state["params"]["w"]
    out[str(shard)] = np.asarray(w)
    out[str(shard) + "_shards"] = np.asarray(len({{s.device for s in w.addressable_shards
                                                  if s.data.shape[0] == 1}}))
try:
    train_method(Population(ToyConvAE(), size=3, shard_members=True), jax.random.key(3),
                 toy_split(n=16), epochs=1, batch_size=8, num_workers=0, disable=True)
except ValueError as err:
    out["error"] = np.asarray(str(err))
np.savez({out!r}, **out)
"""


def test_sharded_member_axis_trains_like_the_replicated_population(tmp_path):
    """On 4 fake devices, ``shard_members`` puts one member per device and trains the same
    members as the replicated population; 3 members on 4 devices are refused."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "members.npz"
    code = SHARDED_RUN.format(train_dir=str(Path(__file__).parents[1] / "train"), out=str(out))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    assert int(got["True_shards"]) == 4 and int(got["False_shards"]) == 0
    np.testing.assert_allclose(got["True"], got["False"], rtol=1e-5, atol=1e-6)
    assert "size (3) to be a multiple of the 4 devices" in str(got["error"])



def test_population_of_a_gan_equals_separate_gans_at_their_rates():
    """GANomaly (several parameter groups, updates in order, a carry handed between them):
    the members of a learning-rate population train as separate GANs at those rates."""
    from anomjax.methods.generative.ganomaly import GANomaly

    method = GANomaly(width=4, latent=8, learning_rate=1e-3)
    rates = (1e-3, 5e-3)
    _, pop_ts, single_ts, losses = _train_rate_population(method, rates, image_size=16, steps=3)
    for population_loss, member_losses in losses:
        np.testing.assert_allclose(population_loss, sum(member_losses), rtol=1e-5)
    for i in range(2):
        got = jax.tree.map(lambda x, i=i: x[i], (pop_ts.params, pop_ts.batch_stats))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     got, (single_ts[i].params, single_ts[i].batch_stats))


def test_a_diverging_member_is_masked_and_the_others_train_on(tmp_path):
    """Member 1's learning rate blows up: the engine keeps member 0 training exactly as a
    separate run at its rate, freezes member 1 at its last finite state and records the
    step at which it diverged, instead of stopping the whole population."""
    rates = (0.05, 1e9)
    state, pop_ts, single_ts, losses = _train_rate_population(ToySGD(), rates, image_size=8,
                                                              steps=4)
    diverged_at = np.asarray(pop_ts.extra["diverged_at"])
    assert diverged_at[0] == -1 and 1 <= diverged_at[1] <= 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7),
                 pop_ts.params, single_ts[0].params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(pop_ts.params))
    assert not np.isfinite(losses[-1][1][1])  # the member alone did diverge
    # The population's loss is member 0's once member 1 is frozen.
    assert losses[-1][0] == pytest.approx(losses[-1][1][0], rel=1e-5)


def test_a_population_run_keeps_the_finite_members_and_records_the_diverged_one(tmp_path):
    """Through the experiment runner: member 0 is saved and tested, member 1 is a failed
    record naming its index, rate and step, with no metrics."""
    from anomjax.data.synthetic import write_mvtec
    from anomjax.experiment import base_config, run_experiment

    write_mvtec(tmp_path / "data", categories=("nut",), n_train=8, n_test_good=2,
                n_test_defect=2, image_size=64, seed=0, disable=True)
    config = base_config("riad", data=str(tmp_path / "data" / "nut"), image_size=64, epochs=2,
                         batch_size=4, save_maps=False)
    config.method.width, config.method.depth, config.method.cell_sizes = 4, 2, (4, 8)
    config.learning_rates = (1e-4, 1e12)
    records = run_experiment(config, tmp_path / "run", progress=False)
    good, bad = records
    assert good["member"] == 0 and 0.0 <= good["pixel_auroc"] <= 1.0
    assert bad["member"] == 1 and bad["status"] == "failed" and bad["pixel_auroc"] is None
    assert "member 1 at learning rate 1e+12 diverged at step" in bad["error"]
    assert (tmp_path / "run" / "members" / "0" / "state").is_dir()
    assert not (tmp_path / "run" / "members" / "1").exists()


def test_mapped_and_vmapped_members_train_and_score_the_same():
    """``member_execution="map"`` (lax.map, the CPU default) and ``"vmap"`` give the same
    updates and scores."""
    outs = {}
    for mode in ("map", "vmap"):
        population = Population(ToySGD(), size=3, member_execution=mode)
        state = population.init(jax.random.key(1), _images(0, size=8))
        opt = population.optimizer(10)
        ts = init_train_state(_copy(state), opt, jax.random.key(2))
        step = make_train_step(population, opt)
        for t in range(3):
            ts, _ = step(ts, jnp.asarray(_images(10 + t, size=8)), jax.random.key(100 + t))
        scores = jax.jit(population.member_scores)(
            {**state, "params": ts.params, "batch_stats": ts.batch_stats},
            jnp.asarray(_images(50, size=8)))
        outs[mode] = (ts.params, scores)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 outs["map"], outs["vmap"])
    with pytest.raises(ValueError, match="member_execution must be one of"):
        Population(ToySGD(), size=2, member_execution="pmap")
