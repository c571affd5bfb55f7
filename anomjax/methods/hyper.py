"""Declared bounds of hyper-parameters, checked whenever a method is built.

A method declares a field's valid values next to its default::

    sigma: float = hyper(4.0, low=0.0, high=64.0)          # 0 <= sigma <= 64
    num_neighbours: int = hyper(9, low=1)                   # integer >= 1
    coreset_ratio: float = hyper(0.1, low=0.0, high=1.0, low_open=True)   # (0, 1]
    bank_dtype: str = hyper("float32", choices=("float32", "bfloat16"))

``@register`` makes every construction of the class (``Method(...)``, ``make_method``,
``method_from_config``) run :func:`check_hyperparameters`, which also rejects NaN and
infinite values of every float field, declared or not, and a value of the wrong type
(``True`` for an int, ``"3"`` for a float). Errors are ``ValueError``s naming the method,
the field, the value and the valid range.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

_KEY = "anomjax.hyper"


def hyper(default: Any, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False,
          choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with ``default`` and its valid values (see the module docstring).

    ``low``/``high`` bound a number (or every element of a tuple of numbers), inclusive
    unless ``low_open``/``high_open``; ``choices`` lists the allowed values.
    """
    bounds = {"low": low, "high": high, "low_open": low_open, "high_open": high_open,
              "choices": None if choices is None else tuple(choices)}
    return dataclasses.field(default=default, metadata={_KEY: bounds})


def _describe(b: dict[str, Any]) -> str:
    """Human-readable range, e.g. ``in (0, 1]`` or ``>= 1``."""
    if b["choices"] is not None:
        return "one of " + ", ".join(repr(c) for c in b["choices"])
    low, high = b["low"], b["high"]
    if low is not None and high is not None:
        return f"in {'(' if b['low_open'] else '['}{low}, {high}{')' if b['high_open'] else ']'}"
    if low is not None:
        return f"{'>' if b['low_open'] else '>='} {low}"
    return f"{'<' if b['high_open'] else '<='} {high}"


def _in_bounds(value: float, b: dict[str, Any]) -> bool:
    low, high = b["low"], b["high"]
    if low is not None and (value <= low if b["low_open"] else value < low):
        return False
    return not (high is not None and (value >= high if b["high_open"] else value > high))


def _check_type(owner: str, field: dataclasses.Field, value: Any) -> None:
    """Reject a value whose type contradicts the field's default (bool for int, str for float)."""
    default = field.default
    if default is dataclasses.MISSING or default is None or value is None:
        return
    bad = False
    if isinstance(default, bool):
        bad = not isinstance(value, bool)
    elif isinstance(default, int):
        bad = isinstance(value, bool) or not isinstance(value, int)
    elif isinstance(default, float):
        bad = isinstance(value, bool) or not isinstance(value, int | float)
    elif isinstance(default, str):
        bad = not isinstance(value, str)
    if bad:
        raise ValueError(f"{owner}: hyper-parameter {field.name}={value!r} must be "
                         f"{type(default).__name__}, got {type(value).__name__}")


def check_hyperparameters(method: Any) -> None:
    """Raise a ``ValueError`` naming the first field of ``method`` outside its valid values."""
    owner = getattr(method, "name", type(method).__name__)
    for field in dataclasses.fields(method):
        value = getattr(method, field.name)
        _check_type(owner, field, value)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{owner}: hyper-parameter {field.name}={value!r} must be a "
                                 "finite number")
        bounds = field.metadata.get(_KEY)
        if bounds is None or value is None:
            continue
        if bounds["choices"] is not None:
            if value not in bounds["choices"]:
                raise ValueError(f"{owner}: hyper-parameter {field.name}={value!r} must be "
                                 f"{_describe(bounds)}")
            continue
        for v in values:
            if not _in_bounds(v, bounds):
                raise ValueError(f"{owner}: hyper-parameter {field.name}={value!r} must be "
                                 f"{_describe(bounds)}")


def validated(cls: type) -> type:
    """Make every construction of dataclass ``cls`` run :func:`check_hyperparameters`."""
    if "_anomjax_validated" in cls.__dict__:
        return cls
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        check_hyperparameters(self)

    __init__.__doc__ = original.__doc__
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    cls.__init__ = __init__
    cls._anomjax_validated = True
    return cls


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def parse_value(text: str, like: Any) -> Any:
    """``text`` (a ``--set`` or ``--config.`` value) read as the type of ``like``.

    Booleans take ``true/false/1/0/yes/no``; tuples take ``a,b`` or ``(a, b)``, their items
    typed like the first item of ``like`` (a Python literal when ``like`` is empty); ``none``
    clears any field but a string one; a field whose value is ``None`` takes a Python literal
    (number, tuple, ``None``, bool) or else the text. Raises ``ValueError`` naming the type.
    """
    if text.lower() == "none" and not isinstance(like, str):
        return None
    try:
        if isinstance(like, bool):
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError(text)
            return text.lower() in _TRUE
        if isinstance(like, int | float | str):
            return type(like)(text)
        if isinstance(like, tuple | list):
            inner = type(like[0]) if like else _literal
            text = text.strip()
            if text[:1] in "([" and text[-1:] in ")]":
                text = text[1:-1]
            return tuple(inner(t.strip()) for t in text.split(",") if t.strip() != "")
    except ValueError:
        raise ValueError(f"cannot read {text!r} as {type(like).__name__}") from None
    return _literal(text)


def _literal(text: str) -> Any:
    """A Python literal (number, tuple, None, bool), else the text itself."""
    if text.lower() == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
