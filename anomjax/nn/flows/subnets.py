"""The coupling subnets (not invertible themselves) as Flax modules.

* :class:`FullyConnected`: an MLP over the last axis (DifferNet, CFLOW-AD).
* :class:`ConvSubnet`: ``conv k x k -> ReLU -> conv k x k`` over ``[B, H, W, C]`` maps,
  ``k = 3`` or ``1`` (FastFlow).
* :class:`CrossScaleConv`: CS-Flow's cross-convolutions over three maps of halving size.

Products run at the default precision; a flow's score traces them at ``HIGHEST``
(:func:`anomjax.precision.full_precision`).
:func:`bind` turns a module and its params into the callable a coupling takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's default initialisation of Linear and Conv2d (which the authors' code used):
# weights and biases uniform in +-1 / sqrt(fan_in).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default bias initialisation for a layer with ``fan_in`` inputs."""
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class FullyConnected(nn.Module):
    """``[..., C_in] -> [..., features]``: ``Dense -> ReLU`` for each of ``hidden``, then a
    linear ``Dense``."""

    features: int
    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu(_dense(width, x.shape[-1], f"fc{i}")(x))
        return _dense(self.features, x.shape[-1], "out")(x)


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=TORCH_KERNEL_INIT,
                    bias_init=torch_bias_init(fan_in), name=name)


def _conv(features: int, kernel: int, in_channels: int, name: str, stride: int = 1) -> nn.Conv:
    """PyTorch-style convolution: symmetric zero padding ``kernel // 2`` on each side,
    PyTorch's default initialisation."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)),
                   kernel_init=TORCH_KERNEL_INIT,
                   bias_init=torch_bias_init(in_channels * kernel * kernel), name=name)


class ConvSubnet(nn.Module):
    """``[B, H, W, C_in] -> [B, H, W, features]``: ``conv -> ReLU -> conv`` (same size)."""

    features: int
    hidden: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        x = nn.relu(_conv(self.hidden, k, x.shape[-1], "conv0")(x))
        return _conv(self.features, k, self.hidden, "conv1")(x)


def _upsample2(x: jax.Array) -> jax.Array:
    """Bilinear 2x upsampling ``[B, h, w, C] -> [B, 2h, 2w, C]`` (half-pixel centres, as
    PyTorch's ``Upsample(scale_factor=2, mode="bilinear", align_corners=False)``)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear", antialias=False)


class CrossScaleConv(nn.Module):
    """CS-Flow's cross-convolutions: maps ``x_0 [B, h, w, C]``, ``x_1 [B, h/2, w/2, C]``,
    ``x_2 [B, h/4, w/4, C]`` to outputs of the same sizes with ``features`` channels.

    Per scale ``i``: ``y_i = leaky(conv_i0(x_i))``; out ``= conv_i1(y_i)`` plus an upsampled
    conv of the next coarser ``y_{i+1}`` and a stride-2 conv of the next finer ``y_{i-1}``;
    each output is multiplied by a learned ``gamma_i`` initialised at 0 (the authors'
    ``use_gamma``: every coupling starts as the identity).
    """

    features: int
    hidden: int
    kernel_size: int = 3
    leaky_slope: float = 0.1

    @nn.compact
    def __call__(self, xs: tuple[jax.Array, jax.Array, jax.Array]
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        k, f, h = self.kernel_size, self.features, self.hidden
        y = [nn.leaky_relu(_conv(h, k, x.shape[-1], f"conv_scale{i}_0")(x), self.leaky_slope)
             for i, x in enumerate(xs)]
        out = [_conv(f, k, h, f"conv_scale{i}_1")(y[i]) for i in range(3)]
        out[0] = out[0] + _conv(f, k, h, "up_conv10")(_upsample2(y[1]))
        out[1] = (out[1] + _conv(f, k, h, "down_conv01", stride=2)(y[0])
                  + _conv(f, k, h, "up_conv21")(_upsample2(y[2])))
        out[2] = out[2] + _conv(f, k, h, "down_conv12", stride=2)(y[1])
        gammas = [self.param(f"gamma{i}", nn.initializers.zeros, (1,)) for i in range(3)]
        return tuple(o * g.astype(o.dtype) for o, g in zip(out, gammas, strict=True))


def init_params(module: nn.Module, key: jax.Array, sample: Any) -> Any:
    """Params of ``module`` for input like ``sample`` with PyTorch's default distribution
    (kernels and biases uniform in ``+-1/sqrt(fan_in)``; CS-Flow's ``gamma`` at 0), drawn with
    NumPy from a seed derived from ``key``: a flow has dozens of subnets, and compiling their
    random initialisation with XLA takes far longer than drawing them."""
    shapes = jax.eval_shape(module.init, key, sample)["params"]
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def fill(tree: Any) -> Any:
        out = {}
        fan_in = None
        if "kernel" in tree:
            fan_in = int(np.prod(tree["kernel"].shape[:-1]))
        for name, leaf in tree.items():
            if isinstance(leaf, dict):
                out[name] = fill(leaf)
            elif name in ("kernel", "bias"):
                bound = 1.0 / np.sqrt(max(fan_in or 1, 1))
                out[name] = jnp.asarray(rng.uniform(-bound, bound, leaf.shape), leaf.dtype)
            else:
                out[name] = jnp.zeros(leaf.shape, leaf.dtype)
        return out

    return fill(shapes)


def bind(module: nn.Module, params: Any) -> Callable[[Any], Any]:
    """``x -> module.apply({"params": params}, x)`` with ``x`` cast to the params' dtype (so
    a bfloat16 copy of the params runs the subnet in bfloat16) and float32 outputs."""
    dtype = jax.tree.leaves(params)[0].dtype

    def apply(x: Any) -> Any:
        x = jax.tree.map(lambda a: a.astype(dtype), x)
        out = module.apply({"params": params}, x)
        return jax.tree.map(lambda a: a.astype(jnp.float32), out)

    return apply
