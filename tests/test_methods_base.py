"""The method registry, ``--set`` parsing and config round trips."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest

from anomjax.methods.base import (
    make_method,
    method_class,
    method_config,
    method_from_config,
    register,
)
from anomjax.methods.protocol import FittedMethod


@register
@dataclasses.dataclass(frozen=True)
class _Toy(FittedMethod):
    """A toy method used only to test the registry (it is never fitted or scored)."""

    name: ClassVar[str] = "toy-registry-test"
    ratio: float = 0.1
    k: int = 9
    layers: tuple[str, ...] = ("a", "b")
    flag: bool = False
    weights: str | None = None

    def fit(self, key, batches):
        raise NotImplementedError("the registry toy is never fitted")

    def score(self, state, images):
        raise NotImplementedError("the registry toy is never scored")


def test_make_method_parses_each_field_type():
    m = make_method("toy-registry-test", {"ratio": "0.01", "k": "3", "layers": "x,y,z",
                                          "flag": "true", "weights": "w.pth"})
    assert m == _Toy(ratio=0.01, k=3, layers=("x", "y", "z"), flag=True, weights="w.pth")


def test_unknown_hyper_parameter_names_the_known_ones():
    with pytest.raises(ValueError, match="has no hyper-parameter 'radius'.*ratio, k, layers"):
        make_method("toy-registry-test", {"radius": "3"})


def test_bad_value_names_the_setting():
    with pytest.raises(ValueError, match="--set k=three"):
        make_method("toy-registry-test", {"k": "three"})


def test_typed_value_in_the_string_overrides_says_where_typed_values_go():
    with pytest.raises(TypeError, match=r"layers=\('x',\) is not a string.*keyword fields"):
        make_method("toy-registry-test", {"layers": ("x",)})
    assert make_method("toy-registry-test", layers=("x",)).layers == ("x",)


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError, match="unknown method 'nope'.*toy-registry-test"):
        method_class("nope")


def test_config_round_trip():
    m = _Toy(ratio=0.25, layers=("p",))
    config = method_config(m)
    assert config == {"method": "toy-registry-test",
                      "params": {"ratio": 0.25, "k": 9, "layers": ["p"], "flag": False,
                                 "weights": None}}
    assert json.loads(json.dumps(config)) == config  # what config.json and checkpoints hold
    assert method_from_config(config) == m


def test_a_record_from_before_sigma_side_keeps_its_blur_in_pixels():
    """Run folders written before ``sigma_side`` existed blurred with ``sigma`` pixels at
    every size; reading them back must keep that, while a new record keeps its value."""
    old = method_config(make_method("stpm"))
    del old["params"]["sigma_side"]
    assert method_from_config(old).sigma_side == 0
    assert method_from_config(method_config(make_method("stpm"))).sigma_side == 256


def test_register_refuses_non_dataclass_and_duplicates():
    with pytest.raises(TypeError):
        register(type("Plain", (), {"name": "plain"}))

    @dataclasses.dataclass(frozen=True)
    class NoProtocol:
        name: ClassVar[str] = "toy-no-protocol"

    with pytest.raises(TypeError, match="must subclass FittedMethod or TrainedMethod"):
        register(NoProtocol)

    @dataclasses.dataclass(frozen=True)
    class Other(_Toy):
        name: ClassVar[str] = "toy-registry-test"

    with pytest.raises(ValueError, match="registered twice"):
        register(Other)
