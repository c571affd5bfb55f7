"""The registry of methods: names, construction from hyper-parameters, run-config records.

A method is a frozen dataclass of hyper-parameters with pure functions that subclasses
:class:`~anomjax.methods.protocol.FittedMethod` or
:class:`~anomjax.methods.protocol.TrainedMethod` (the protocols, with every optional hook
and its default, are in :mod:`anomjax.methods.protocol`). Its fitted or trained state is a
nested ``dict`` of arrays (a pytree), so ``jax.jit``, sharding, Orbax checkpoints and
``jax.tree_util`` treat every method alike. Methods never read datasets, print, or own a
training loop.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from anomjax.methods.hyper import parse_value, validated
from anomjax.methods.protocol import FittedMethod, MethodWrapper, TrainedMethod
from anomjax.types import Batch, Scores, State

__all__ = ["Batch", "FittedMethod", "Scores", "State", "TrainedMethod", "make_method",
           "method_class", "method_config", "method_from_config", "method_names", "register"]


_REGISTRY: dict[str, type] = {}
_M = TypeVar("_M", bound=type)


def register(cls: _M) -> _M:
    """Class decorator: make a method available by its ``name`` to the CLI and tools.

    Every construction of the class then checks its hyper-parameters (see
    :mod:`anomjax.methods.hyper`: declared bounds, finite floats, matching types).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a frozen dataclass to be registered")
    if not issubclass(cls, FittedMethod | TrainedMethod) or issubclass(cls, MethodWrapper):
        raise TypeError(f"{cls.__name__} must subclass FittedMethod or TrainedMethod "
                        "(anomjax.methods.protocol) to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    validated(cls)
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Sorted names of all registered methods."""
    _import_all()
    return sorted(_REGISTRY)


def method_class(name: str) -> type:
    """The class registered under ``name``; a clear error lists the known names."""
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_method(name: str, overrides: dict[str, str] | None = None, **fields: Any) -> Any:
    """Build a method from its name, typed ``fields`` and string ``overrides`` (``--set k=v``).

    String overrides are converted to each field's declared type; unknown names raise a
    ``ValueError`` that lists the method's hyper-parameters.
    """
    cls = method_class(name)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = dict(fields)
    for key, text in (overrides or {}).items():
        if key not in known:
            raise ValueError(
                f"method {name!r} has no hyper-parameter {key!r}; it has: {', '.join(known)}")
        default = getattr(cls, key, None) if known[key].default is dataclasses.MISSING else (
            known[key].default)
        if not isinstance(text, str):
            raise TypeError(f"method {name!r}: override {key}={text!r} is not a string; pass "
                            f"typed values as keyword fields (make_method({name!r}, {key}=...))")
        try:
            values[key] = parse_value(text, default)
        except ValueError as err:
            raise ValueError(f"--set {key}={text}: {err}") from None
    return cls(**values)


def method_config(method: Any) -> dict[str, Any]:
    """JSON description of a method: its name and every hyper-parameter as a JSON value
    (tuples become lists); what ``config.json`` and training checkpoints record."""
    params = json.loads(json.dumps(dataclasses.asdict(method), default=str))
    return {"method": method.name, "params": params}


#: Hyper-parameters added after run folders were first written, each with the value that
#: reproduces a run recorded without it (``sigma_side``: ``sigma`` was in pixels at every
#: image size before it).
VALUES_BEFORE_FIELD_EXISTED: dict[str, Any] = {"sigma_side": 0}


def method_from_config(config: dict[str, Any]) -> Any:
    """Inverse of :func:`method_config` (lists become tuples, as fields declare them); a
    field missing from an older record takes :data:`VALUES_BEFORE_FIELD_EXISTED`'s value."""
    cls = method_class(config["method"])
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in config["params"].items()}
    names = {f.name for f in dataclasses.fields(cls)}
    for name, value in VALUES_BEFORE_FIELD_EXISTED.items():
        if name in names and name not in params:
            params[name] = value
    return cls(**params)


def _import_all() -> None:
    """Import the method modules so that their ``@register`` decorators run."""
    import anomjax.methods  # noqa: F401  (registers everything it imports)
