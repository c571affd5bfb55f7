"""FastFlow (Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D
Normalizing Flows", 2021).

Each feature level ``l`` of a frozen encoder, ``[B, h_l, w_l, C_l]``, is layer-normalised
over ``(h, w, C)`` (learned element-wise affine) and mapped by its own 2-D flow of 8
all-in-one steps whose subnets are ``conv k -> ReLU -> conv k`` with ``k`` alternating 3 and
1 (the paper's ResNet setting). Training minimises, summed over the levels,
``mean_B (0.5 ||z||^2 - log|det J|)``. The map is the mean over levels of the bilinearly
upsampled ``-exp(-0.5 mean_C z^2)`` (the negative per-position probability); the image score
is its maximum.

The paper published no code; as anomalib (the reference implementation the survey's numbers
and ours are compared with) the steps are FrEIA ``AllInOneBlock``s: affine coupling of the
second channel half with log-scales ``clamp * tanh(0.1 s)`` (``clamp`` 2.0), a global affine
with softplus scale, and a fixed random channel permutation (hard, ``permute_soft=False``);
subnet width ``hidden_ratio`` times its input channels (1.0 for ResNet-18); Adam learning
rate 1e-3, weight decay 1e-5 (paper); 500 epochs (paper). Deviations: the paper's ResNet-18
``layer1..layer3`` (strides 4/8/16) become EfficientNet-Lite0 ``stage2, stage3, stage5``
(strides 4/8/16, channels 24/40/112, the blocks anomalib's FastFlow takes from a timm
EfficientNet with ``out_indices=[1, 2, 3]``); ``backbone="resnet18", taps=("layer1",
"layer2", "layer3")`` with the user's weights is the paper's setting. Permutations are drawn
from NumPy with seed ``1000 * level + step`` (FrEIA draws them unseeded). The LayerNorm's
parameters have the feature maps' shape, so a trained model scores images of its training
size only (as anomalib's).

The NLL has no floor, in anomalib's objective as here (the flows, loss and clamp equal
anomalib's: ``tests/parity/test_parity_fastflow.py``): the LayerNorm's learned affine is not
in the log-determinant, so shrinking its scale concentrates the features for free while the
flows' unbounded global affine expands them back (on i.i.d. N(0, 1) features anomalib's own
flow reaches an NLL of -529 in 1,000 steps with the LayerNorm scale at 0.001; without the
affine it levels off near 55, against 64 for the true density: ``experiments/parity/
flows_a.md``); a
constant feature channel has no floor either. ``norm_affine=False`` removes the first
cause; the default is the reference's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from anomjax.methods.base import State, register
from anomjax.methods.flows.common import (
    all_in_one_flow,
    encoder_features,
    encoder_state,
    feature_shapes,
    init_all_in_one,
    pytorch_adam,
)
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_rgb
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.flows import ConvSubnet, all_in_one_split, random_permutation
from anomjax.precision import full_precision
from anomjax.scoring import to_scores, upsample
from anomjax.types import Scores


def layer_norm(x: jax.Array, params: dict[str, jax.Array] | None,
               eps: float = 1e-5) -> jax.Array:
    """LayerNorm of each ``x [B, h, w, C]`` over ``(h, w, C)`` with element-wise
    ``params["scale"]``, ``params["bias"]`` ``[h, w, C]`` (``nn.LayerNorm([C, h, w])``), or
    without an affine when ``params`` is ``None`` (``elementwise_affine=False``)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(var + eps)
    return x if params is None else x * params["scale"] + params["bias"]


@register
@dataclasses.dataclass(frozen=True)
class FastFlow(TrainedMethod):
    """FastFlow: one 2-D flow per feature level (see the module docstring).

    Attributes:
      backbone, backbone_weights: the frozen encoder and optional weights file.
      taps: the feature levels.
      flow_steps: all-in-one steps per level (paper: 8).
      hidden_ratio: subnet width / its input channels (paper: 1.0 for ResNet-18).
      conv3x3_only: every subnet 3x3 (the paper's setting for ResNet-18 is alternating).
      norm_affine: learn the LayerNorms' element-wise affine (anomalib); ``False``: plain
        LayerNorms, so the features cannot be shrunk outside the log-determinant.
      clamp: coupling log-scale bound (anomalib: 2.0).
      learning_rate, weight_decay: Adam (paper: 1e-3, 1e-5).
      sigma: Gaussian smoothing of the map in input pixels (paper: none).
      sigma_side: image side at which the smoothing sigma holds (anomalib's 256 px); other sizes
        scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "fastflow"
    default_epochs: ClassVar[int] = 500  # the paper's
    default_batch_size: ClassVar[int] = 32  # the paper's

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ("stage2", "stage3", "stage5")
    flow_steps: int = hyper(8, low=1, high=64)
    hidden_ratio: float = hyper(1.0, low=0.0, high=16.0, low_open=True)
    conv3x3_only: bool = False
    norm_affine: bool = True
    clamp: float = hyper(2.0, low=0.0, high=20.0, low_open=True)
    learning_rate: float = hyper(1e-3, low=0.0, high=1.0, low_open=True)
    weight_decay: float = hyper(1e-5, low=0.0, high=1.0)
    sigma: float = hyper(0.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _subnets(self, channels: int) -> list[ConvSubnet]:
        split = all_in_one_split(channels)
        hidden = max(int(split * self.hidden_ratio), 1)
        return [ConvSubnet(2 * (channels // 2), hidden,
                           1 if (k % 2 == 1 and not self.conv3x3_only) else 3)
                for k in range(self.flow_steps)]

    def _flow(self, params: dict[str, Any], level: int, channels: int) -> Any:
        mixings = [random_permutation(1000 * level + k, channels)
                   for k in range(self.flow_steps)]
        return all_in_one_flow(params, self._subnets(channels), channels, self.clamp, mixings,
                               event_ndims=3)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Frozen encoder, flow params and (``norm_affine``) LayerNorm affines ``[h, w, C]``
        per level (1 and 0)."""
        check_rgb(self.name, images)
        frozen = encoder_state(self.name, self.backbone, self.backbone_weights, self.taps)
        shapes = feature_shapes(self.backbone, frozen, images, self.taps)
        params = {}
        for level, (key_l, f) in enumerate(zip(jax.random.split(key, len(shapes)), shapes,
                                               strict=True)):
            channels = f.shape[-1]
            params[f"level{level}"] = {
                "flow": init_all_in_one(key_l, self._subnets(channels),
                                        jnp.zeros(f.shape, jnp.float32), channels)}
            if self.norm_affine:
                params[f"level{level}"]["norm"] = {
                    "scale": jnp.ones(f.shape[1:], jnp.float32),
                    "bias": jnp.zeros(f.shape[1:], jnp.float32)}
        return {"params": params, "frozen": frozen}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam (PyTorch-style weight decay), constant learning rate."""
        del total_steps
        return pytorch_adam(self.learning_rate, weight_decay=self.weight_decay)

    def frozen_features(self, state: State, images: jax.Array) -> list[jax.Array]:
        """The frozen encoder's features ``[B, h, w, c]`` per tap (a function of the image
        alone, so the training engine computes them once per training image:
        ``anomjax.train.frozen_cache``)."""
        return encoder_features(self.backbone, state, images, self.taps)

    def _latents(self, params: dict[str, Any], state: State, images: jax.Array,
                 feats: list[jax.Array] | None = None) -> list[tuple[jax.Array, jax.Array]]:
        """``(z [B, h, w, C], log_det [B])`` per level; the encoder runs once (not at all when
        its features ``feats`` are given)."""
        feats = self.frozen_features(state, images) if feats is None else feats
        out = []
        for level, f in enumerate(feats):
            p = params[f"level{level}"]
            if "norm" in p and p["norm"]["scale"].shape != f.shape[1:]:
                raise ValueError(
                    f"fastflow: features of level {level} are {f.shape[1:]} but the model was "
                    f"trained on {p['norm']['scale'].shape}: score images of the training size")
            x = layer_norm(f, p.get("norm"))
            out.append(self._flow(p["flow"], level, f.shape[-1]).forward_and_log_det(x))
        return out

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: list[jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Sum over levels of ``mean_B(0.5 ||z||^2 - log_det)`` (anomalib's FastflowLoss);
        ``frozen``: the encoder's features when the engine cached them."""
        del key
        total, aux = jnp.zeros((), jnp.float32), {}
        for level, (z, log_det) in enumerate(self._latents(params, state, images, frozen)):
            nll = jnp.mean(0.5 * jnp.sum(jnp.square(z), axis=(1, 2, 3)) - log_det)
            aux[f"nll_level{level}"] = nll
            total = total + nll
        return total, aux

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = mean over levels of upsampled ``-exp(-0.5 mean_C z^2)``; image = its max."""
        check_rgb(self.name, images)
        size = images.shape[1:3]
        maps = []
        feats = self.frozen_features(state, images)
        with full_precision():  # the flows decide the scores
            latents = self._latents(state["params"], state, images, feats)
        for z, _ in latents:
            prob = jnp.exp(-0.5 * jnp.mean(jnp.square(z), axis=-1))  # [B, h, w]
            maps.append(upsample(-prob, size))
        return to_scores(jnp.mean(jnp.stack(maps), axis=0), size, self.sigma,
                         sigma_side=self.sigma_side)
