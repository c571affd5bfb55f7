"""Several parameter groups, each with its own optimiser and loss, in one jitted step.

GANs alternate discriminator and generator updates, and some methods train in phases
(f-AnoGAN: the GAN, then an encoder against the frozen GAN). A method declares this by
returning a :class:`GroupedOptimizer` from ``optimizer(total_steps)``::

    def optimizer(self, total_steps):
        return GroupedOptimizer(
            optimizers={"generator": optax.adam(2e-4, b1=0.5),
                        "discriminator": optax.adam(2e-4, b1=0.5)},
            phases=(Phase(updates=(Update("g", "generator", self.generator_loss),
                                   Update("d", "discriminator", self.discriminator_loss))),))

``state["params"]`` is then a dict with one entry per group. Each training step runs the
updates of the current phase in order: update ``u`` takes the gradient of
``u.loss(params, state, images, key)`` (same signature and aux contract as a single-loss
method's ``loss``) with respect to ``params[u.group]`` only, applies that group's optimiser,
and the next update sees the new parameters and the new ``batch_stats``. An aux entry
``"carry"`` (any pytree, not logged, no gradient) is handed to the later updates of the same
step as ``state["carry"]`` (e.g. GANomaly's discriminator update reuses the generator's
output from before the generator's update, as its authors' code does). ``Update.every = k``
runs an update only on steps ``s`` with ``s % k == k - 1`` (e.g. one generator update per
five critic updates in WGAN-GP); otherwise it is skipped without computing its loss.
``Update.after(group_params, loss, key) -> group_params``, when given, rewrites the group's
parameters after its optimiser step (GANomaly re-initialises a collapsed discriminator, as
its authors' code does); the optimiser state is kept.

The phase of a step is the number of phase boundaries (``Phase.until``, in steps) at or
below it, a pure function of the checkpointed step, so a resumed run continues in the same
phase as an unbroken one. The whole step (all phases, as a ``lax.switch``) is one jitted,
buffer-donating function, sharded as the single-optimiser step is.

Metrics of a step: ``loss`` (the sum of the losses of the updates of the phase: the NaN
guard stops the run when any of them is not finite), ``loss_<name>`` and
``grad_norm_<name>`` per update (0 on steps where it does not run), ``grad_norm`` (all
updates together), ``phase``, and every aux scalar of the losses (the aux names of all
phases together; 0 where the phase does not produce it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

Loss = Callable[[Any, dict[str, Any], jax.Array, jax.Array], tuple[jax.Array, dict[str, Any]]]
After = Callable[[Any, jax.Array, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class Update:
    """One sub-step: ``loss``'s gradient with respect to ``params[group]`` updates the group.

    Attributes:
      name: metric name of this update (``loss_<name>``, ``grad_norm_<name>``).
      group: the top-level key of ``params`` it trains.
      loss: ``(params, state, images, key) -> (scalar, aux)``.
      every: run on steps ``s`` with ``s % every == every - 1`` only.
      after: ``(group params after the step, loss, key) -> group params`` (``None``: keep).
    """

    name: str
    group: str
    loss: Loss
    every: int = 1
    after: After | None = None


@dataclasses.dataclass(frozen=True)
class Phase:
    """The updates run, in order, by every step before step ``until`` (``None``: to the end)."""

    updates: tuple[Update, ...]
    until: int | None = None


@dataclasses.dataclass(frozen=True)
class GroupedOptimizer:
    """One optax optimiser per parameter group and the phases that use them.

    ``init(params)`` -> ``{group: optimiser state}``, the ``opt_state`` of the train state.
    """

    optimizers: Mapping[str, optax.GradientTransformation]
    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("a GroupedOptimizer needs at least one phase")
        for phase in self.phases:
            if not phase.updates:
                raise ValueError("every phase needs at least one update")
            for u in phase.updates:
                if u.group not in self.optimizers:
                    raise ValueError(f"update {u.name!r} trains group {u.group!r}, which has no "
                                     f"optimiser (groups: {', '.join(self.optimizers)})")
                if u.every < 1:
                    raise ValueError(f"update {u.name!r}: every must be >= 1, got {u.every}")
            names = [u.name for u in phase.updates]
            if len(set(names)) != len(names):
                raise ValueError(f"update names repeat within a phase: {names}")
        bounds = [p.until for p in self.phases[:-1]]
        if any(b is None for b in bounds) or bounds != sorted(bounds):
            raise ValueError("every phase but the last needs an increasing 'until' step, got "
                             f"{[p.until for p in self.phases]}")

    def init(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The optimiser state of every group of ``params``."""
        missing = set(self.optimizers) - set(params)
        if missing:
            raise ValueError(f"the method's params have no group(s) {sorted(missing)}; they "
                             f"have {sorted(params)}")
        return {g: opt.init(params[g]) for g, opt in self.optimizers.items()}

    def phase_index(self, step: jax.Array) -> jax.Array:
        """``[]`` int32: the phase of ``step`` (number of boundaries at or below it)."""
        index = jnp.zeros((), jnp.int32)
        for phase in self.phases[:-1]:
            index = index + (step >= phase.until).astype(jnp.int32)
        return index
