"""The method protocols, as code: what a fitted and a trained method provide, and the hooks.

Every registered method is a frozen dataclass of hyper-parameters that subclasses one of two
base classes; their abstract methods are the required part of the contract (a subclass that
misses one cannot be instantiated, and a type checker sees it), and every optional hook is
declared here once, with its default:

* :class:`FittedMethod` (``kind = "fit"``, memory-bank and Gaussian methods)::

      state = method.fit(key, batches)        # batches: Iterable[Batch] of normal images
      scores = method.score(state, images)    # images [B, H, W, 3] in [0, 1] -> Scores

* :class:`TrainedMethod` (``kind = "train"``, methods that learn weights; executed by
  :mod:`anomjax.train`)::

      state = method.init(key, images)                  # initial state pytree
      optimizer = method.optimizer(total_steps)         # optax, or a GroupedOptimizer
      loss, aux = method.loss(params, state, images, key)
      scores = method.score(state, images)

A method that wraps another (:class:`MethodWrapper`, e.g. a population of K models)
forwards every hook to the wrapped method unless it overrides it, so a hook added here
reaches every wrapper. :data:`TRAIN_HOOKS` lists the optional hooks; ``anomjax list`` shows
which of them a method overrides. Methods never import the training engine: how a method
is optimised is described by :mod:`anomjax.methods.optimization` and executed by
:mod:`anomjax.train`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

import jax
import numpy as np
import optax
from jax.sharding import Mesh, Sharding

from anomjax.methods.optimization import GroupedOptimizer
from anomjax.types import Batch, Scores, State

#: The optional hooks of :class:`TrainedMethod`, each with a default there.
TRAIN_HOOKS = ("calibrate", "calibrate_test", "frozen_features", "host_inputs",
               "train_state_sharding", "train_update")
#: The optional class settings (defaults used by the engine and the command line).
SETTINGS = ("default_epochs", "default_batch_size", "default_image_size", "init_on_all_images",
            "uses_caller_mesh")


class HostInputs(Protocol):
    """Per-batch inputs drawn on the host (see :meth:`TrainedMethod.host_inputs`)."""

    def draw(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` rows drawn with ``rng``: ``{name: [batch_size, ...]}`` numpy arrays,
        a pure function of ``rng``'s state (the engine seeds it from the run seed and the
        step, so a resumed run draws what an uninterrupted one does)."""
        ...


class _MethodBase(abc.ABC):
    """What every method declares: its registry name and kind, its paper's defaults, and
    ``score``."""

    #: The registry name (``--method NAME``).
    name: ClassVar[str]
    #: ``"fit"`` (one pass over normal images) or ``"train"`` (gradient training).
    kind: ClassVar[str]
    #: The paper's batch size (the command line's default; ``None``: 16).
    default_batch_size: ClassVar[int | None] = None
    #: The paper's input side in pixels (configs' default).
    default_image_size: ClassVar[int] = 256
    #: ``True``: ``fit`` and ``score`` split their work over the mesh the caller sets with
    #: ``jax.set_mesh`` (PatchCore's memory bank); the run API sets its devices' mesh.
    uses_caller_mesh: ClassVar[bool] = False

    @abc.abstractmethod
    def score(self, state: State, images: jax.Array) -> Scores:
        """Pure and jittable: images ``[B, H, W, 3]`` float32 in ``[0, 1]`` -> ``Scores``
        (image ``[B]``, maps ``[B, H, W]`` at the input resolution)."""


class FittedMethod(_MethodBase):
    """A method fitted in one pass over normal images (no gradient training)."""

    kind: ClassVar[str] = "fit"

    @abc.abstractmethod
    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        """The fitted state pytree from one pass over ``batches`` of normal images."""


class TrainedMethod(_MethodBase):
    """A method that learns weights; :func:`anomjax.train.train_method` executes it.

    Required: :meth:`init`, :meth:`optimizer`, :meth:`score`, and :meth:`loss` unless
    :meth:`optimizer` returns a :class:`~anomjax.methods.optimization.GroupedOptimizer`
    (whose updates carry their own losses). Optional hooks: :data:`TRAIN_HOOKS`.
    """

    kind: ClassVar[str] = "train"
    #: The paper's epochs, used when the run gives no budget.
    default_epochs: ClassVar[int | None] = None
    #: ``True``: :meth:`init` gets every training image (a re-iterable of numpy batches
    #: ``[b, H, W, 3]``, streamed from disk) instead of one sample batch.
    init_on_all_images: ClassVar[bool] = False
    #: K for a method that trains K independent members stacked on the leading axis of its
    #: params, optimiser state and batch statistics (a population). The engine then keeps
    #: training when a member's update is not finite: that member keeps its last finite
    #: parameters and ``state["diverged_at"]`` ``[K]`` int32 records the step (-1: alive);
    #: the loss's aux must give ``member_losses`` ``[K]``. ``None``: one model.
    member_count: ClassVar[int | None] = None
    #: With ``member_count``: ``True`` when the members' computations cannot reach one
    #: another (one member after another), so a member's NaN cannot spread into the others'
    #: gradients and the engine need not recompute a step in which a member diverged.
    members_isolated: ClassVar[bool] = False

    @abc.abstractmethod
    def init(self, key: jax.Array, images: Any) -> State:
        """The initial state: a dict of arrays with ``"params"`` (trainable), optionally
        ``"batch_stats"`` (BatchNorm running statistics, replaced by the loss's aux entry),
        and any other entries (carried unchanged, checkpointed). ``images`` is one sample
        batch ``[B, H, W, 3]`` float32 in ``[0, 1]`` (see :attr:`init_on_all_images`).
        May read weight files (not jitted)."""

    @abc.abstractmethod
    def optimizer(self, total_steps: int) -> optax.GradientTransformation | GroupedOptimizer:
        """The optimiser from the method's fields; ``total_steps`` is the run's length (a
        schedule defined on it is recorded with the run's checkpoints)."""

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             **inputs: Any) -> tuple[jax.Array, dict[str, Any]]:
        """Pure and jittable: the scalar loss and an aux dict of scalar metrics (an aux
        ``"batch_stats"`` replaces the running statistics and is not logged).

        ``params`` is the current trainable pytree (``state["params"]`` is stale), ``images``
        the global batch ``[B, H, W, 3]``, ``key`` this step's key. A method with
        :meth:`frozen_features` receives them as ``frozen=`` when the engine cached them; a
        method with :meth:`host_inputs` receives the step's draw as ``host=`` (a dict of
        ``[B, ...]`` arrays sharded like ``images``).
        """
        raise NotImplementedError(
            f"{self.name} defines no loss(); a method whose optimizer() returns a "
            "GroupedOptimizer gives each Update its own loss")

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """Called once after training with the unshuffled training batches, e.g. to store
        score statistics used at test time. Default: ``state`` unchanged (``batches`` not
        read)."""
        del batches
        return state

    def calibrate_test(self, state: State, batches: Iterable[Batch]) -> State:
        """Called by evaluation (:func:`anomjax.evaluate.predict_split` and the training
        engine's validation) with the batches of the split about to be scored, before scoring
        it: a transductive normaliser, a statistic of the test set itself (CFLOW-AD's
        authors normalise by the test set's maximum). Default: ``state`` unchanged."""
        del batches
        return state

    def train_update(self, optimizer: Any, opt_state: Any, state: State, images: jax.Array,
                     key: jax.Array, **inputs: Any) -> tuple[Any, Any, jax.Array, dict[str, Any]]:
        """Optional: the method's own training step, for a method that makes several
        optimiser updates per image batch (CFLOW-AD's fibre mini-batches); pure and jittable.

        Given ``optimizer`` (what :meth:`optimizer` returned), its state, the method state
        (``state["params"]`` current), the batch ``images [B, H, W, 3]``, the step's ``key``
        and, as ``frozen=`` and ``host=``, the cached frozen features and the step's host
        inputs (as :meth:`loss` gets them), returns ``(params, opt_state, loss,
        aux)`` with an aux ``"grad_norm"`` (the other aux scalars are logged). The engine
        then makes no update of its own. Not overridden, or in a population
        (:attr:`member_count`): the engine's one update per batch of :meth:`loss`.
        """
        raise NotImplementedError(f"{self.name} makes one update per batch (no train_update)")

    @property
    def uses_frozen_features(self) -> bool:
        """Whether :meth:`frozen_features` is defined (overridden) for this method."""
        return type(self).frozen_features is not TrainedMethod.frozen_features

    def frozen_features(self, state: State, images: jax.Array) -> Any:
        """Jittable features of a frozen network that depend on the image alone, a pytree
        of ``[B, ...]`` arrays. The engine computes them once per training image, keeps them
        on the host and passes each batch's as ``loss(..., frozen=...)`` (see
        :mod:`anomjax.train.frozen_cache`). Default: none (``None``)."""
        del state, images
        return None

    def host_inputs(self, image_size: tuple[int, int]) -> HostInputs | None:
        """Per-batch inputs the host draws for every training step, for data too large for
        the train state (DRAEM's anomaly-source textures): built once per run (not jitted,
        never checkpointed nor exported) for training images of ``image_size`` ``(H, W)``.
        At step ``s`` the engine calls ``draw(np.random.default_rng([seed, 1, s]),
        B)`` (``seed``: the run's data seed, :func:`anomjax.train.host_draws.step_rng`),
        shards the arrays on their batch axis like the images and passes them as
        ``loss(..., host=...)`` (and to :meth:`train_update`). Not with a
        :class:`~anomjax.methods.optimization.GroupedOptimizer`. Default: none (``None``)."""
        del image_size
        return None

    def train_state_sharding(self, mesh: Mesh) -> dict[str, Sharding] | None:
        """Shardings of the train state on ``mesh``, keyed by its fields (``params``,
        ``opt_state``, ``batch_stats``, ``step``, ``key``, ``extra``; each a prefix of that
        field's pytree). Default ``None``: the whole state replicated."""
        del mesh
        return None


def _forwarded(setting: str) -> property:
    """A read-only property giving the wrapped method's ``setting`` (or, where the wrapped
    method does not declare it, :class:`TrainedMethod`'s default)."""

    def get(self: MethodWrapper) -> Any:
        return getattr(self.method, setting, getattr(TrainedMethod, setting, None))

    return property(get, doc=f"The wrapped method's ``{setting}``.")


class MethodWrapper(TrainedMethod, FittedMethod):
    """A method that wraps ``self.method`` and forwards every hook and setting to it.

    A subclass overrides what it changes (e.g. a population vmaps ``init``, ``loss`` and
    ``score`` over its members) and inherits the forwarding of everything else, so a hook
    added to the protocol is never silently dropped by a wrapper.
    """

    method: Any

    # The wrapped method's name, kind and settings; a fitted method has no training
    # settings, so those fall back to the protocol's defaults.
    name = _forwarded("name")
    kind = _forwarded("kind")
    default_epochs = _forwarded("default_epochs")
    default_batch_size = _forwarded("default_batch_size")
    default_image_size = _forwarded("default_image_size")
    init_on_all_images = _forwarded("init_on_all_images")
    uses_caller_mesh = _forwarded("uses_caller_mesh")
    member_count = _forwarded("member_count")
    members_isolated = _forwarded("members_isolated")

    def init(self, key: jax.Array, images: Any) -> State:
        return self.method.init(key, images)

    def optimizer(self, total_steps: int) -> optax.GradientTransformation | GroupedOptimizer:
        return self.method.optimizer(total_steps)

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             **inputs: Any) -> tuple[jax.Array, dict[str, Any]]:
        return self.method.loss(params, state, images, key, **inputs)

    def train_update(self, optimizer: Any, opt_state: Any, state: State, images: jax.Array,
                     key: jax.Array, **inputs: Any) -> tuple[Any, Any, jax.Array, dict[str, Any]]:
        return self.method.train_update(optimizer, opt_state, state, images, key, **inputs)

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State:
        return self.method.fit(key, batches)

    def score(self, state: State, images: jax.Array) -> Scores:
        return self.method.score(state, images)

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        return self.method.calibrate(state, batches) if self.calibrates else state

    def calibrate_test(self, state: State, batches: Iterable[Batch]) -> State:
        return (self.method.calibrate_test(state, batches)
                if overrides(self.method, "calibrate_test") else state)

    @property
    def calibrates(self) -> bool:
        """Whether the wrapped method overrides :meth:`TrainedMethod.calibrate`."""
        return overrides(self.method, "calibrate")

    @property
    def uses_frozen_features(self) -> bool:
        return bool(getattr(self.method, "uses_frozen_features", False))

    def frozen_features(self, state: State, images: jax.Array) -> Any:
        return self.method.frozen_features(state, images)

    def host_inputs(self, image_size: tuple[int, int]) -> HostInputs | None:
        hook = getattr(self.method, "host_inputs", None)
        return None if hook is None else hook(image_size)

    def train_state_sharding(self, mesh: Mesh) -> dict[str, Sharding] | None:
        hook = getattr(self.method, "train_state_sharding", None)
        return None if hook is None else hook(mesh)


def overrides(method: Any, hook: str) -> bool:
    """Whether ``method`` does more than :class:`TrainedMethod`'s default ``hook`` (its class
    defines its own; a wrapper asks the wrapped method; a fitted method has no training
    hooks)."""
    if isinstance(method, MethodWrapper):
        return overrides(method.method, hook)
    own = getattr(type(method), hook, None)
    return own is not None and own is not getattr(TrainedMethod, hook)


def overridden_hooks(method_or_class: Any) -> list[str]:
    """The :data:`TRAIN_HOOKS` a method (or method class) overrides (``anomjax list``)."""
    cls = method_or_class if isinstance(method_or_class, type) else type(method_or_class)
    if not issubclass(cls, TrainedMethod):
        return []
    return [h for h in TRAIN_HOOKS if getattr(cls, h) is not getattr(TrainedMethod, h)]
