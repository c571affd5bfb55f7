"""Per-batch host inputs (the hook ``host_inputs``): drawn from (seed, step), never in the
train state; a resumed run draws exactly what an uninterrupted one does."""

from __future__ import annotations

import dataclasses
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_toy import ToyConvAE, toy_split

from anomjax.methods.population import Population, member_state
from anomjax.methods.self_supervised.draem import DRAEM
from anomjax.run_folder import load_run, save_run
from anomjax.train import CheckpointStore, init_train_state, method_state, train_method
from anomjax.train.loop import _run_keys

KEY, BATCH = 5, 4
TOKENS = 1000


class RecordingDraws:
    """``{"tokens": [B, 2]}`` int32 drawn with the step's generator; every draw recorded."""

    def __init__(self) -> None:
        self.drawn: list[np.ndarray] = []
        self.lock = threading.Lock()

    def draw(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        tokens = rng.integers(0, TOKENS, (batch_size, 2)).astype(np.int32)
        with self.lock:
            self.drawn.append(tokens)
        return {"tokens": tokens}


RECORDERS: list[RecordingDraws] = []


@dataclasses.dataclass(frozen=True)
class ToyWithDraws(ToyConvAE):
    """``ToyConvAE`` whose loss is scaled by its step's drawn tokens (so the trained weights
    depend on every draw)."""

    name = "toy_with_draws"

    def host_inputs(self, image_size: tuple[int, int]) -> RecordingDraws:
        RECORDERS.append(RecordingDraws())
        return RECORDERS[-1]

    def loss(self, params, state, images, key, host):
        loss, aux = super().loss(params, state, images, key)
        scale = 1.0 + jnp.mean(host["tokens"].astype(jnp.float32)) / TOKENS
        return loss * scale, aux


def expected_draw(step: int) -> np.ndarray:
    """Step ``step``'s tokens, computed independently of the engine."""
    seed = _run_keys(jax.random.key(KEY))[1]
    rng = np.random.default_rng([seed, 1, step])
    return rng.integers(0, TOKENS, (BATCH, 2)).astype(np.int32)


def _train(method, run_dir, epochs, resume=False):
    return train_method(method, jax.random.key(KEY), toy_split(n=8), epochs=epochs,
                        batch_size=BATCH, run_dir=run_dir, resume=resume, num_workers=0,
                        disable=True)


def test_each_step_draws_from_seed_and_step_and_a_resume_draws_the_same(tmp_path):
    RECORDERS.clear()
    straight = _train(ToyWithDraws(), tmp_path / "straight", epochs=2)  # 4 steps
    _train(ToyWithDraws(), tmp_path / "resumed", epochs=1)
    resumed = _train(ToyWithDraws(), tmp_path / "resumed", epochs=2, resume=True)
    chex.assert_trees_all_equal(straight, resumed)
    assert not any("tokens" in str(path) for path in jax.tree_util.tree_flatten_with_path(
        resumed)[0])
    # Each run may draw its first step once more to compile ahead: compare the last draws.
    straight_draws, _, resumed_draws = (r.drawn for r in RECORDERS)
    for step in range(4):
        np.testing.assert_array_equal(straight_draws[step - 4], expected_draw(step))
    for step in (2, 3):  # the resumed run's steps 2 and 3 are the uninterrupted run's
        np.testing.assert_array_equal(resumed_draws[step - 4], expected_draw(step))
    assert not np.array_equal(expected_draw(0), expected_draw(1))


def test_a_population_forwards_the_hook_and_shares_each_draw():
    """The population's hook is the method's, and every member's loss gets the step's one
    draw: each member's loss is the method's own on that draw."""
    method = ToyWithDraws()
    population = Population(method, size=2)
    assert isinstance(population.host_inputs((8, 8)), RecordingDraws)
    images = jnp.asarray(np.random.default_rng(0).random((BATCH, 8, 8, 3)), jnp.float32)
    host = {"tokens": jnp.asarray(expected_draw(0))}
    state = population.init(jax.random.key(0), images)
    total, aux = population.loss(state["params"], state, images, jax.random.key(1), host=host)
    for i in range(2):
        member = member_state(state, i)
        own, _ = method.loss(member["params"], member, images,
                             jax.random.fold_in(jax.random.key(1), i), host=host)
        np.testing.assert_allclose(aux[f"loss_member{i}"], own, rtol=1e-6)
    assert np.isfinite(float(total))


def test_draem_checkpoints_hold_no_textures_and_old_ones_are_refused(tmp_path):
    """DRAEM's train state (as the engine builds and checkpoints it) holds no texture;
    resuming a checkpoint whose state still holds ``frozen["textures"]`` (written before the
    textures moved to the host) is refused, saying to train again; a run folder saved with
    them still scores (the entry is never read)."""
    method = DRAEM(rec_width=4, seg_width=4)
    images = toy_split(n=2, size=32).images
    ts = init_train_state(method.init(jax.random.key(0), images), method.optimizer(2),
                          jax.random.key(0))
    textures = method.host_inputs((32, 32)).textures
    assert textures.shape == (12, 32, 32, 3) and ts.extra == {}
    store = CheckpointStore(tmp_path / "new")
    store.save(ts, {})
    store.close()
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(tmp_path / "new" / "checkpoints" / "0" / "state")
    assert "frozen" not in saved["extra"]
    assert all(np.asarray(leaf).dtype != np.uint8 for leaf in jax.tree.leaves(saved))
    old = CheckpointStore(tmp_path / "old")
    old.save(ts.replace(extra={"frozen": {"textures": jnp.asarray(textures)}}), {})
    old.close()
    with pytest.raises(ValueError, match="(?s)older anomjax: train again.*extra.frozen"):
        train_method(method, jax.random.key(0), toy_split(n=4, size=32), epochs=None,
                     steps=2, batch_size=2, run_dir=tmp_path / "old", resume=True,
                     num_workers=0, disable=True)
    # A run folder whose fitted state still holds the textures scores as before.
    state = {**method_state(ts), "frozen": {"textures": textures}}
    save_run(tmp_path / "old_run", method, state, {"image_size": 32})
    _, loaded, _ = load_run(tmp_path / "old_run")
    want = method.score(method_state(ts), images)
    chex.assert_trees_all_close(method.score(loaded, images), want)
