"""K independent models of one method trained (or fitted) and scored as one, with ``jax.vmap``.

``Population(method, size=K)`` is itself a method of the same kind, so the one training
engine, the CLI and the experiment runner drive it unchanged: one jitted, donated train
step updates all K members at once. Its state stacks the members on a leading ``[K]`` axis:

    state = {"params": [K, ...], "batch_stats": [K, ...],   # always per member
             "members": {entry: [K, ...]},                    # carried entries that differ
             "shared": {entry: ...}}                          # carried entries equal in all K

Carried entries identical in every member (a frozen pretrained teacher or backbone) are
stored once and enter ``vmap`` unbatched, so their computation (e.g. the teacher's forward
pass) is done once per step for all K members, not K times.

Member ``i`` is initialised with ``jax.random.split(key, K)[i]`` and its loss gets the key
``fold_in(step key, i)``; every member sees the same batches (one data order for the
population), so members differ in initialisation and in per-step randomness. Likewise a
method's per-batch host inputs (the hook ``host_inputs``, e.g. DRAEM's anomaly sources) are
drawn once per step for the population and shared by every member, as the images are. The loss is
the sum of the members' losses, whose gradient with respect to member ``i``'s parameters is
member ``i``'s own gradient; the optimiser is the method's, vmapped over members, so each
member's update is exactly the one a separate run would make (tested).

Two options of the population:

* ``learning_rates=(r_0, ..., r_{K-1})`` sweeps the learning rate in the same step: member
  ``i``'s every update is the wrapped optimiser's update times ``r_i / method.learning_rate``.
  That equals training member ``i`` with ``learning_rate = r_i`` for every optax optimiser
  whose update is proportional to its rate (SGD with or without momentum, Adam, AdamW with
  decoupled weight decay, any schedule scaled by the rate): tested against separate runs.
  The method must have a ``learning_rate`` field; members also differ in initialisation.
* ``shard_members=True`` places the ``[K]`` axis of the params, optimiser state, batch
  statistics and per-member entries on the devices of the engine's mesh (K a multiple of
  the device count): each device holds and updates K / D members, and the batch is
  gathered to every device (the members all see the whole batch). Off, the population is
  replicated like any other state.

``member_state(state, i)`` is member ``i``'s state for the wrapped method (score, save,
evaluate it as a single model); ``Population.score`` scores all members in one vmapped
call and returns their mean (an ensemble). Fit methods (``kind == "fit"``) fit their
members one after another on one decoded copy of the training images (``fit`` is a Python
pass over batches, which ``vmap`` cannot batch), then score them vmapped.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from anomjax.methods.optimization import GroupedOptimizer
from anomjax.methods.protocol import MethodWrapper
from anomjax.types import Batch, Scores, State

PER_MEMBER = ("params", "batch_stats")
MEMBER_EXECUTIONS = ("auto", "vmap", "map")
#: The most members a population may have: K models are initialised one after another and
#: held in memory together, so a mistyped K (100000) is refused rather than left to run out
#: of memory.
MAX_SIZE = 1024


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _all_equal(trees: list[Any]) -> bool:
    first = jax.tree.leaves(trees[0])
    for other in trees[1:]:
        leaves = jax.tree.leaves(other)
        if len(leaves) != len(first) or not all(
                np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, leaves,
                                                                           strict=True)):
            return False
    return True


def stack_members(states: list[State]) -> State:
    """The population state of member states ``states`` (see the module docstring)."""
    out: State = {k: _stack([s[k] for s in states]) for k in PER_MEMBER if k in states[0]}
    members, shared = {}, {}
    for key in states[0]:
        if key in PER_MEMBER:
            continue
        values = [s[key] for s in states]
        if _all_equal(values):
            shared[key] = values[0]
        else:
            members[key] = _stack(values)
    out["members"], out["shared"] = members, shared
    return out


def member_state(state: State, index: int) -> State:
    """Member ``index``'s state, as the wrapped method's ``init``/``fit`` would return it."""
    take = jax.tree.map(lambda x: x[index], {k: state[k] for k in PER_MEMBER if k in state})
    return {**state["shared"], **jax.tree.map(lambda x: x[index], state["members"]), **take}


def _member_axes(state: State) -> tuple[State, State]:
    """``(batched part, shared part)`` of a population state, for ``vmap``."""
    batched = {k: state[k] for k in PER_MEMBER if k in state}
    batched["members"] = state["members"]
    return batched, state["shared"]


def _join(batched: State, shared: State) -> State:
    out = {**shared, **batched["members"]}
    out.update({k: batched[k] for k in PER_MEMBER if k in batched})
    return out


def vmapped_optimizer(optimizer: optax.GradientTransformation,
                      member_scales: tuple[float, ...] | None = None
                      ) -> optax.GradientTransformation:
    """``optimizer`` applied to each member of stacked ``[K, ...]`` params independently;
    member ``i``'s update multiplied by ``member_scales[i]`` where given."""
    def init(params: Any) -> Any:
        return jax.vmap(optimizer.init)(params)

    def update(updates: Any, opt_state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            updates, opt_state = jax.vmap(lambda g, s: optimizer.update(g, s))(updates,
                                                                               opt_state)
        else:
            updates, opt_state = jax.vmap(optimizer.update)(updates, opt_state, params)
        if member_scales is not None:
            scales = np.asarray(member_scales, np.float32)
            updates = jax.tree.map(
                lambda u: u * scales.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype),
                updates)
        return updates, opt_state

    return optax.GradientTransformation(init, update)


@dataclasses.dataclass(frozen=True)
class Population(MethodWrapper):
    """``size`` independent members of ``method``, trained and scored as one (see above).

    Attributes:
      method: the wrapped method (any registered method).
      size: K, the number of members (at least 1).
      learning_rates: ``[K]`` learning rates, one per member (``None``: the method's own
        for all); see the module docstring.
      shard_members: place the member axis on the mesh's devices (see the module docstring).
      member_execution: how the members' losses and scores run: ``"vmap"`` (one batched
        program: per-member convolutions become grouped ones, fast on accelerators),
        ``"map"`` (``lax.map``: one member after another inside the same jitted step, plain
        convolutions, faster on XLA:CPU) or ``"auto"`` (``map`` on CPU, ``vmap`` elsewhere).
        The numbers are the same either way (tested).
    """

    method: Any
    size: int = 2
    learning_rates: tuple[float, ...] | None = None
    shard_members: bool = False
    member_execution: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not (
                1 <= self.size <= MAX_SIZE):
            raise ValueError(f"Population: size must be an integer in [1, {MAX_SIZE}], got "
                             f"{self.size!r}")
        if isinstance(self.method, Population):
            raise ValueError("Population: the wrapped method is already a population")
        if self.learning_rates is not None:
            self._check_learning_rates()
        if self.member_execution not in MEMBER_EXECUTIONS:
            raise ValueError(f"Population: member_execution must be one of "
                             f"{MEMBER_EXECUTIONS}, got {self.member_execution!r}")

    @property
    def execution(self) -> str:
        """``"vmap"`` or ``"map"``: :attr:`member_execution` with ``"auto"`` resolved."""
        if self.member_execution != "auto":
            return self.member_execution
        return "map" if jax.default_backend() == "cpu" else "vmap"

    @property
    def members_isolated(self) -> bool:  # type: ignore[override]
        """Mapped members run one after another: no NaN can pass between them."""
        return self.execution == "map"

    def over_members(self, fn: Any, *args: Any, axes: tuple[int | None, ...]) -> Any:
        """``fn`` applied to each member's slice of ``args`` (member axis ``axes[i]`` of
        argument ``i``; ``None``: the same for all), stacked on a leading ``[K]`` axis: vmapped
        or ``lax.map``-ped as :attr:`member_execution` says."""
        if self.execution == "vmap":
            return jax.vmap(fn, in_axes=axes, axis_size=self.size)(*args)
        mapped = [i for i, axis in enumerate(axes) if axis is not None]
        moved = tuple(args[i] if axes[i] == 0 else
                      jax.tree.map(lambda x, a=axes[i]: jnp.moveaxis(x, a, 0), args[i])
                      for i in mapped)

        def one(sliced: tuple[Any, ...]) -> Any:
            full = list(args)
            for i, value in zip(mapped, sliced, strict=True):
                full[i] = value
            return fn(*full)

        return jax.lax.map(one, moved)

    def _check_learning_rates(self) -> None:
        rates = self.learning_rates
        if not isinstance(rates, tuple) or len(rates) != self.size:
            raise ValueError(f"Population: learning_rates must be a tuple of size={self.size} "
                             f"rates, got {rates!r}")
        if self.method.kind != "train" or not isinstance(
                getattr(self.method, "learning_rate", None), float):
            raise ValueError(f"Population: {self.method.name} has no learning_rate field to "
                             "sweep")
        if self.method.learning_rate <= 0:
            raise ValueError(f"Population: {self.method.name}.learning_rate must be > 0 to "
                             "scale it")
        for rate in rates:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
                    np.isfinite(rate) and rate > 0):
                raise ValueError("Population: every learning rate must be a finite number "
                                 f"> 0, got {rate!r}")

    def member_keys(self, key: jax.Array) -> jax.Array:
        """``[K]`` keys: member ``i`` is initialised or fitted with entry ``i``."""
        return jax.random.split(key, self.size)

    # ------------------------------------------------------------------ training methods

    @property
    def member_count(self) -> int:  # type: ignore[override]
        return self.size

    def init(self, key: jax.Array, images: Any) -> State:
        """Each member's ``method.init`` with its own key, stacked; ``diverged_at`` ``[K]``
        (-1: training; the engine sets the step at which a member diverged)."""
        state = stack_members([self.method.init(k, images) for k in self.member_keys(key)])
        return {**state, "diverged_at": jnp.full((self.size,), -1, jnp.int32)}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """The wrapped method's optimiser, vmapped over members (each member's updates
        scaled to its learning rate where ``learning_rates`` is set)."""
        scales = None if self.learning_rates is None else tuple(
            float(r) / self.method.learning_rate for r in self.learning_rates)
        inner = self.method.optimizer(total_steps)
        if not isinstance(inner, GroupedOptimizer):
            return vmapped_optimizer(inner, scales)
        return GroupedOptimizer(  # a GAN: each group's optimiser and each update vmapped
            optimizers={g: vmapped_optimizer(o, scales) for g, o in inner.optimizers.items()},
            phases=tuple(dataclasses.replace(p, updates=tuple(
                dataclasses.replace(u, loss=functools.partial(self._members_loss, u.loss))
                for u in p.updates)) for p in inner.phases))

    def train_state_sharding(self, mesh: Mesh) -> dict[str, NamedSharding] | None:
        """The train state's shardings on ``mesh`` (its one axis): the member axis split
        over the devices; ``None`` (replicated) unless ``shard_members``."""
        if not self.shard_members:
            return None
        devices = int(mesh.devices.size)
        if self.size % devices:
            raise ValueError(f"Population: shard_members needs size ({self.size}) to be a "
                             f"multiple of the {devices} devices")
        member = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        replicated = NamedSharding(mesh, PartitionSpec())
        return {"params": member, "opt_state": member, "batch_stats": member,
                "step": replicated, "key": replicated,
                "extra": {"members": member, "shared": replicated,
                          "diverged_at": replicated}}

    def frozen_features(self, state: State, images: jax.Array) -> dict[str, Any]:
        """The wrapped method's frozen features, once for all members where they do not
        depend on the member (a shared teacher: ``{"shared": [B, ...]}``), else per member
        (``{"per_member": [B, K, ...]}``, batch axis first, as the engine's cache needs)."""
        batched, shared = _member_axes(state)

        def one(member: State) -> Any:
            return self.method.frozen_features(_join(member, shared), images)

        try:
            return {"shared": jax.vmap(one, out_axes=None, axis_size=self.size)(batched)}
        except ValueError:  # the features read a per-member entry
            return {"per_member": jax.vmap(one, out_axes=1, axis_size=self.size)(batched)}

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             **inputs: Any) -> tuple[jax.Array, dict[str, Any]]:
        """Sum of the members' losses on ``images``; aux entries are the members' mean
        (``loss_member<i>`` each member's loss) and their stacked ``batch_stats``.
        ``frozen`` (from :meth:`frozen_features`, cached by the engine) reaches every
        member's loss: the shared features unbatched, per-member ones by member; ``host``
        (the step's host inputs) reaches every member unbatched, like ``images``."""
        return self._members_loss(self.method.loss, params, state, images, key, **inputs)

    def _members_loss(self, member_loss: Any, params: Any, state: State, images: jax.Array,
                      key: jax.Array, frozen: dict[str, Any] | None = None,
                      host: dict[str, jax.Array] | None = None
                      ) -> tuple[jax.Array, dict[str, Any]]:
        """``member_loss`` (the method's loss, or one update's of a GAN) of every member,
        vmapped and summed (see :meth:`loss`); a GAN update's ``carry`` stays per member."""
        batched, shared = _member_axes({**state, "params": params})
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.size))
        carry = state.get("carry", {})

        shared_frozen = None if frozen is None else frozen.get("shared")
        member_frozen = None if frozen is None else frozen.get("per_member")

        def one(member: State, k: jax.Array, handed: Any,
                own_frozen: Any) -> tuple[jax.Array, dict[str, Any]]:
            full = _join(member, shared)
            if "carry" in state:
                full["carry"] = handed
            cached = own_frozen if member_frozen is not None else shared_frozen
            extra = {} if frozen is None else {"frozen": cached}
            if host is not None:
                extra["host"] = host
            return member_loss(full["params"], full, images, k, **extra)

        losses, aux = self.over_members(one, batched, keys, carry, member_frozen,
                                        axes=(0, 0, 0, None if member_frozen is None else 1))
        per_member = ("batch_stats", "carry")
        out: dict[str, Any] = {k: jnp.mean(v) for k, v in aux.items() if k not in per_member}
        out.update({k: aux[k] for k in per_member if k in aux})
        out.update({f"loss_member{i}": losses[i] for i in range(self.size)})
        out["member_losses"] = losses
        return jnp.sum(losses), out

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """Each member calibrated by the wrapped method (if it calibrates) on the same
        batches (decoded once)."""
        if not self.calibrates:
            return state
        cached = list(batches)
        calibrated = stack_members([self.method.calibrate(member_state(state, i), iter(cached))
                                    for i in range(self.size)])
        return {**calibrated, **{k: state[k] for k in ("diverged_at",) if k in state}}

    # ------------------------------------------------------------------ fit methods

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        """Each member fitted with its own key on the same batches (decoded once)."""
        cached = list(batches)
        return stack_members([self.method.fit(k, iter(cached))
                              for k in self.member_keys(key)])

    # ------------------------------------------------------------------ scoring

    def member_scores(self, state: State, images: jax.Array) -> Scores:
        """Every member's scores in one call: image ``[K, B]``, maps ``[K, B, H, W]``."""
        batched, shared = _member_axes(state)
        return self.over_members(lambda m: self.method.score(_join(m, shared), images),
                                 batched, axes=(0,))

    def score(self, state: State, images: jax.Array) -> Scores:
        """The members' mean scores (an ensemble of the K models)."""
        scores = self.member_scores(state, images)
        return Scores(image=jnp.mean(scores.image, axis=0), maps=jnp.mean(scores.maps, axis=0))
