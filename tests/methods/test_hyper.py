"""Declared hyper-parameter bounds are enforced at every construction of a method."""

import dataclasses
import math
from typing import ClassVar

import pytest

from anomjax.methods.base import make_method, method_from_config
from anomjax.methods.hyper import check_hyperparameters, hyper, validated


@validated
@dataclasses.dataclass(frozen=True)
class _Toy:
    name: ClassVar[str] = "toy"
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    ratio: float = hyper(0.1, low=0.0, high=1.0, low_open=True)
    count: int = hyper(9, low=1)
    sizes: tuple[int, ...] = hyper((2, 4), low=1)
    mode: str = hyper("a", choices=("a", "b"))
    free: float = 1.0


@pytest.mark.parametrize("kwargs, fragment", [
    ({"sigma": -1.0}, "sigma=-1.0 must be in [0.0, 64.0]"),
    ({"sigma": 1e9}, "sigma=1000000000.0 must be in [0.0, 64.0]"),
    ({"sigma": math.nan}, "sigma=nan must be a finite number"),
    ({"ratio": 0.0}, "ratio=0.0 must be in (0.0, 1.0]"),
    ({"count": 0}, "count=0 must be >= 1"),
    ({"count": True}, "count=True must be int"),
    ({"count": 2.5}, "count=2.5 must be int"),
    ({"sizes": (2, -3)}, "sizes=(2, -3) must be >= 1"),
    ({"mode": "c"}, "mode='c' must be one of 'a', 'b'"),
    ({"free": math.inf}, "free=inf must be a finite number"),
    ({"free": "3"}, "free='3' must be float"),
])
def test_out_of_range_values_name_the_field(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        _Toy(**kwargs)
    assert str(err.value).startswith(f"toy: hyper-parameter {fragment}")


def test_boundary_values_are_accepted():
    toy = _Toy(sigma=0.0, ratio=1.0, count=1, sizes=(1,), mode="b", free=3)
    check_hyperparameters(toy)  # does not raise


def test_registered_methods_check_through_make_method_and_config():
    with pytest.raises(ValueError, match="patchcore: hyper-parameter sigma=nan"):
        make_method("patchcore", {"sigma": "nan"})
    with pytest.raises(ValueError, match="sigma=-1.0"):
        method_from_config({"method": "padim", "params": {"sigma": -1.0}})
