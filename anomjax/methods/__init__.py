"""All methods, grouped by the survey's families. Importing this registers them."""

from anomjax.methods.base import (
    FitMethod,
    Method,
    State,
    make_method,
    method_class,
    method_config,
    method_from_config,
    method_names,
    register,
)

__all__ = [
    "FitMethod",
    "Method",
    "State",
    "make_method",
    "method_class",
    "method_config",
    "method_from_config",
    "method_names",
    "register",
]
