"""Data parallelism: a 1-D device mesh, batches sharded on it, state replicated."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class DataMesh:
    """A ``Mesh`` over all devices (of all processes) with one ``"data"`` axis.

    ``shard_batch`` turns each process's local ``[b, ...]`` rows into one global
    ``[b * process_count, ...]`` array sharded on the batch axis; ``replicate`` puts a
    pytree on every device. Works alike on 1 device, N local devices and after
    ``jax.distributed.initialize()`` on many hosts.
    """

    def __init__(self, devices: list[Any] | None = None):
        devices = jax.devices() if devices is None else devices
        self.mesh = Mesh(np.asarray(devices), ("data",))
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def __eq__(self, other: object) -> bool:  # equal meshes: equal (a cache key)
        return isinstance(other, DataMesh) and other.mesh == self.mesh

    def __hash__(self) -> int:
        return hash(self.mesh)

    @property
    def num_devices(self) -> int:
        """Devices in the mesh (all processes)."""
        return int(self.mesh.devices.size)

    def local_batch_size(self, global_batch_size: int) -> int:
        """Rows this process loads per step; the global batch must fill every device equally."""
        if global_batch_size % self.num_devices:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                             f"{self.num_devices} devices of the mesh")
        return global_batch_size // jax.process_count()

    def shard_batch(self, local: np.ndarray) -> jax.Array:
        """This process's ``[b, ...]`` rows -> the global batch, sharded on its first axis."""
        return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local))

    def place(self, tree: Any, sharding: Any) -> Any:
        """Place ``tree`` (identical on all processes) with ``sharding``, a pytree prefix of
        it (e.g. one sharding for all leaves); each device gets its slice of every leaf."""
        def put(leaf_sharding: Any, subtree: Any) -> Any:
            return jax.tree.map(lambda x: jax.make_array_from_callback(
                np.shape(x), leaf_sharding, lambda index: np.asarray(x)[index]), subtree)

        if sharding is self.replicated:
            return self.replicate(tree)
        return jax.tree.map(put, sharding, tree,
                            is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))

    def replicate(self, tree: Any) -> Any:
        """Place every leaf of ``tree`` (identical on all processes) on every device."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)),
            tree)
