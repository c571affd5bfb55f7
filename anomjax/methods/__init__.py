"""All methods, grouped by the survey's families. Importing this registers them."""

# Method families: importing each registers its methods.
from anomjax.methods import (  # noqa: F401  (importing a family registers its methods)
    distillation,
    feature_modeling,
    flows,
    generative,
    one_class,
    reconstruction,
    self_supervised,
)
from anomjax.methods.base import (
    State,
    make_method,
    method_class,
    method_config,
    method_from_config,
    method_names,
    register,
)
from anomjax.methods.optimization import GroupedOptimizer, Phase, Update
from anomjax.methods.protocol import FittedMethod, MethodWrapper, TrainedMethod

__all__ = [
    "FittedMethod",
    "GroupedOptimizer",
    "MethodWrapper",
    "Phase",
    "State",
    "TrainedMethod",
    "Update",
    "make_method",
    "method_class",
    "method_config",
    "method_from_config",
    "method_names",
    "register",
]
