"""The one protocol every method follows, and the registry that names them.

A method is a frozen dataclass of hyper-parameters with pure functions. Its fitted or
trained state is a nested ``dict`` of arrays (a pytree), so ``jax.jit``, sharding, Orbax
checkpoints and ``jax.tree_util`` treat every method alike.

Two kinds exist:

* ``kind = "fit"`` (memory-bank and Gaussian methods)::

      state = method.fit(key, batches)        # batches: Iterable[Batch] of normal images
      scores = method.score(state, images)    # images [B, H, W, 3] in [0, 1] -> Scores

* ``kind = "train"`` (methods that learn weights; driven by :mod:`anomjax.train`)::

      state = method.init(key, images)                    # initial state pytree
      loss, aux = method.loss(params, state, batch, key)  # differentiable loss
      scores = method.score(state, images)

Methods never read datasets, print, or own a training loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol, TypeVar

import jax

from anomjax.methods.hyper import validated
from anomjax.types import Batch, Scores, State

__all__ = ["Batch", "FitMethod", "Method", "Scores", "State", "make_method", "method_class",
           "method_config", "method_from_config", "method_names", "register"]


class Method(Protocol):
    """Structural type shared by all methods."""

    name: ClassVar[str]
    kind: ClassVar[str]

    def score(self, state: State, images: jax.Array) -> Scores: ...


class FitMethod(Method, Protocol):
    """A method fitted in one pass over normal images (no gradient training)."""

    def fit(self, key: jax.Array, batches: Iterable[Batch]) -> State: ...


_REGISTRY: dict[str, type] = {}
_M = TypeVar("_M", bound=type)


def register(cls: _M) -> _M:
    """Class decorator: make a method available by its ``name`` to the CLI and tools.

    Every construction of the class then checks its hyper-parameters (see
    :mod:`anomjax.methods.hyper`: declared bounds, finite floats, matching types).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a frozen dataclass to be registered")
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
        values[key] = _parse_like(text, default, key)
    return cls(**values)


def method_config(method: Any) -> dict[str, Any]:
    """JSON-serialisable description of a method: its name and every hyper-parameter."""
    return {"method": method.name, "params": dataclasses.asdict(method)}


def method_from_config(config: dict[str, Any]) -> Any:
    """Inverse of :func:`method_config` (lists become tuples, as fields declare them)."""
    cls = method_class(config["method"])
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in config["params"].items()}
    return cls(**params)


def _parse_like(text: str, default: Any, key: str) -> Any:
    """Parse ``text`` into the type of ``default``."""
    try:
        if isinstance(default, bool):
            if text.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return text.lower() in {"true", "1", "yes"}
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            inner: Callable[[str], Any] = type(default[0]) if default else str
            return tuple(inner(t) for t in text.split(",") if t)
        if default is None:
            return None if text.lower() in {"none", ""} else text
        return type(default)(text)
    except ValueError:
        raise ValueError(f"--set {key}={text}: cannot read {text!r} as "
                         f"{type(default).__name__}") from None


def _import_all() -> None:
    """Import the method modules so that their ``@register`` decorators run."""
    import anomjax.methods  # noqa: F401  (registers everything it imports)
