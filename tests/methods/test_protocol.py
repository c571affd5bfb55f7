"""The method protocols as code: required parts enforced, every hook forwarded by wrappers."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax
import pytest

from anomjax.methods import method_class, method_names
from anomjax.methods.population import Population
from anomjax.methods.protocol import (
    SETTINGS,
    TRAIN_HOOKS,
    FittedMethod,
    MethodWrapper,
    TrainedMethod,
    overridden_hooks,
)
from anomjax.scoring import to_scores

SENTINEL_SHARDING = {"params": "member-axis"}
SENTINEL_HOST_INPUTS = object()


@dataclasses.dataclass(frozen=True)
class EveryHook(TrainedMethod):
    """A trained method that overrides every optional hook and setting with a marker."""

    name: ClassVar[str] = "toy_every_hook"
    default_epochs: ClassVar[int] = 7
    default_batch_size: ClassVar[int] = 5
    default_image_size: ClassVar[int] = 33
    init_on_all_images: ClassVar[bool] = True
    uses_caller_mesh: ClassVar[bool] = True

    def init(self, key: jax.Array, images: Any) -> dict:
        return {"params": {"w": jnp.ones(())}}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return optax.sgd(0.1)

    def loss(self, params, state, images, key, frozen=None):
        return params["w"] * jnp.mean(images), {}

    def score(self, state, images):
        return to_scores(jnp.mean(images, axis=-1), images.shape[1:3], sigma=0.0)

    def calibrate(self, state, batches):
        return {**state, "calibrated": jnp.asarray(sum(1 for _ in batches))}

    def frozen_features(self, state, images):
        return {"twice": 2.0 * images}

    def train_state_sharding(self, mesh):
        return SENTINEL_SHARDING

    def host_inputs(self, image_size):
        return SENTINEL_HOST_INPUTS if image_size == (4, 4) else None


@dataclasses.dataclass(frozen=True)
class Forwarder(MethodWrapper):
    """The smallest wrapper: it overrides nothing."""

    method: Any


def test_the_wrapper_base_forwards_every_declared_hook_and_setting():
    for name in (*TRAIN_HOOKS, *SETTINGS, "init", "optimizer", "loss", "fit", "score"):
        assert name in vars(MethodWrapper), f"MethodWrapper does not forward {name!r}"


@pytest.mark.parametrize("wrap", [Forwarder, lambda m: Population(m, size=1)])
def test_wrappers_inherit_every_hook_of_the_wrapped_method(wrap):
    inner = EveryHook()
    wrapped = wrap(inner)
    for setting in SETTINGS:
        assert getattr(wrapped, setting) == getattr(inner, setting), setting
    assert wrapped.name == "toy_every_hook" and wrapped.kind == "train"
    assert wrapped.uses_frozen_features and wrapped.calibrates
    images = jnp.ones((2, 4, 4, 3))
    state = wrapped.init(jax.random.key(0), images)
    calibrated = wrapped.calibrate(state, iter([None, None, None]))
    assert int(jax.tree.leaves(calibrated["calibrated"] if "calibrated" in calibrated else
                               calibrated["shared"]["calibrated"])[0]) == 3
    features = jax.tree.leaves(wrapped.frozen_features(state, images))
    assert float(features[0].sum()) == 2.0 * images.size
    assert wrapped.host_inputs((4, 4)) is SENTINEL_HOST_INPUTS


def test_a_wrapper_of_a_method_without_hooks_keeps_the_defaults():
    from tests.train.train_toy import ToyConvAE

    wrapped = Forwarder(ToyConvAE())
    assert not wrapped.uses_frozen_features and not wrapped.calibrates
    assert wrapped.frozen_features({}, jnp.ones((1, 2, 2, 3))) is None
    assert wrapped.calibrate({"a": 1}, iter(())) == {"a": 1}
    assert wrapped.train_state_sharding(None) is None
    assert wrapped.host_inputs((4, 4)) is None
    assert wrapped.default_epochs is None and not wrapped.init_on_all_images


def test_a_method_missing_a_required_part_cannot_be_built():
    @dataclasses.dataclass(frozen=True)
    class NoInit(TrainedMethod):
        name: ClassVar[str] = "no_init"

        def optimizer(self, total_steps):
            return optax.sgd(0.1)

        def score(self, state, images):
            raise AssertionError

    with pytest.raises(TypeError, match="abstract method.*init"):
        NoInit()

    @dataclasses.dataclass(frozen=True)
    class NoFit(FittedMethod):
        name: ClassVar[str] = "no_fit"

        def score(self, state, images):
            raise AssertionError

    with pytest.raises(TypeError, match="abstract method.*fit"):
        NoFit()


def test_every_registered_method_follows_its_protocol():
    kinds = {}
    for name in method_names():
        cls = method_class(name)
        base = TrainedMethod if cls.kind == "train" else FittedMethod
        assert issubclass(cls, base) and not cls.__abstractmethods__, name
        if cls.__module__.startswith("anomjax."):  # not the toys other tests register
            kinds[name] = cls.kind
    assert sum(k == "fit" for k in kinds.values()) == 4
    assert sum(k == "train" for k in kinds.values()) == 22
    assert set(overridden_hooks(method_class("stpm"))) == {"calibrate", "frozen_features"}
    assert overridden_hooks(method_class("draem")) == ["host_inputs"]
    assert overridden_hooks(method_class("patchcore")) == []
    assert method_class("patchcore").uses_caller_mesh
