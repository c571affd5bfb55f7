"""Flax method interceptors that change how a backbone's layers run, without editing it.

The shared backbones (``anomjax.backbones``) build every ``nn.BatchNorm`` frozen
(``use_running_average=True``): right for a pretrained feature extractor, wrong for a
network trained from scratch (the STPM student), which must normalise with the statistics of
the current batch and update running statistics for test time, as PyTorch's ``train()``
mode does. :func:`apply_with` runs a module with such a change, through
``nn.intercept_methods``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from anomjax.nn.batch_norm import batch_norm_train

Interceptor = Callable[..., Any]


def batch_norm_in_train_mode(momentum: float = 0.9, unbiased: bool = True) -> Interceptor:
    """``nn.BatchNorm`` normalises with batch statistics and updates its running ones.

    Running statistics follow ``new = momentum * old + (1 - momentum) * batch`` (Flax's
    convention: ``momentum=0.9`` is PyTorch's default ``momentum=0.1``), with the unbiased
    variance as PyTorch keeps it (``unbiased=False``: the biased one, which with
    ``momentum=0`` gives exactly the statistics the batch was normalised with), when the
    ``batch_stats`` collection is mutable. Statistics
    are over every axis but the channels of the global batch, so under a data-parallel mesh
    they are those of the whole batch (synchronised batch norm). The normalisation has a
    hand-written gradient (:func:`anomjax.nn.batch_norm.batch_norm_train`).
    """

    def intercept(next_fun: Callable[..., Any], args: tuple, kwargs: dict,
                  context: Any) -> Any:
        module = context.module
        if (not isinstance(module, nn.BatchNorm) or context.method_name != "__call__"
                or not module.has_variable("batch_stats", "mean")):
            return next_fun(*args, **kwargs)
        x = args[0]
        channels = x.shape[-1]
        scale = (module.get_variable("params", "scale") if module.use_scale
                 else jnp.ones((channels,), jnp.float32))
        bias = (module.get_variable("params", "bias") if module.use_bias
                else jnp.zeros((channels,), jnp.float32))
        y, mean, var = batch_norm_train(x, scale, bias, module.epsilon)
        if module.is_mutable_collection("batch_stats"):
            n = x.size // channels
            kept_var = var * n / max(n - 1, 1) if unbiased else var
            old_mean = module.get_variable("batch_stats", "mean")
            old_var = module.get_variable("batch_stats", "var")
            module.put_variable("batch_stats", "mean", momentum * old_mean
                                + (1 - momentum) * jax.lax.stop_gradient(mean))
            module.put_variable("batch_stats", "var", momentum * old_var
                                + (1 - momentum) * jax.lax.stop_gradient(kept_var))
        return y

    return intercept


def apply_with(module: nn.Module, variables: dict[str, Any], *args: Any,
               interceptors: Sequence[Interceptor] = (), mutable: Any = False,
               **kwargs: Any) -> Any:
    """``module.apply(variables, *args, mutable=mutable, **kwargs)`` under ``interceptors``.

    Call it inside a ``jax.jit``-traced function (or un-jitted): the interceptors act while
    the module is traced.
    """
    if not interceptors:
        return module.apply(variables, *args, mutable=mutable, **kwargs)
    with nn.intercept_methods(interceptors[0]):
        return apply_with(module, variables, *args, interceptors=interceptors[1:],
                          mutable=mutable, **kwargs)
