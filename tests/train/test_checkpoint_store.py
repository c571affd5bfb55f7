"""CheckpointStore's asynchronous writes: the saved state is a copy, failures surface."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.train.checkpoint_store import CheckpointStore
from anomjax.train.state import TrainState


def _state(value: float) -> TrainState:
    return TrainState(params={"w": jnp.full((64, 64), value)}, opt_state=(), batch_stats=None,
                      step=jnp.asarray(1, jnp.int32), key=jnp.zeros((2,), jnp.uint32),
                      extra={})


def test_background_save_keeps_the_state_of_the_moment_of_saving(tmp_path):
    store = CheckpointStore(tmp_path)
    state = _state(1.0)
    expected = jax.tree.map(np.array, state)
    store.save(state, {"note": "one"})
    # The training step donates the state's buffers: overwrite them while the write runs.
    donated = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 + 7, s), donate_argnums=0)(state)
    assert float(donated.params["w"][0, 0]) == 7.0
    restored, meta = store.restore(store.latest_step(), _state(0.0))
    store.close()
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), expected)
    assert meta == {"note": "one"}


def test_a_failed_background_write_is_raised_at_the_next_call(tmp_path):
    store = CheckpointStore(tmp_path)

    class NotJson:
        pass

    # Orbax serialises the JSON record in its background write, after save returned.
    assert store.save(_state(1.0), {"bad": NotJson()}) == 1
    with pytest.raises(TypeError, match="not JSON serializable"):
        store.latest_step()
    store.close()
