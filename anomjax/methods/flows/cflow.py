"""CFLOW-AD (Gudovskiy, Ishizaka & Kozuka, "CFLOW-AD: Real-Time Unsupervised Anomaly
Detection with Localization via Conditional Normalizing Flows", WACV 2022).

Each feature level ``l`` of a frozen encoder gives ``B h_l w_l`` fibres (feature vectors of
one position, ``C_l`` channels). A conditional flow decoder per level maps a fibre, given the
2-D sinusoidal positional encoding of its position (128 channels), to ``z``; training
maximises ``log p = C * log N(0) - 0.5 ||z||^2 + log|det J|`` through the authors' loss
``-log sigmoid(log p / C)``, summed over levels. At test time the per-position
``log p / C`` of each level is normalised to ``(-inf, 0]`` by subtracting a constant,
exponentiated, upsampled bilinearly to the input and summed over levels; the map is minus
the sum (higher = more anomalous) and the image score its maximum. The authors' map is
``max - sum`` with the maximum over the test set, in float64; the constant changes no
ranking, and in float32 ``L - sum`` would round every probability below ``1e-7 L`` away.

Authors' defaults kept: encoder levels of strides 8/16/32 (WRN50 ``layer2..layer4``); 8
FrEIA ``AllInOneBlock`` couplings per decoder with the condition concatenated to the
subnet's input, subnet ``Linear(d, 2d) -> ReLU -> Linear(2d, 2 (C//2))`` (``d`` = kept
half + condition), clamp 1.9 (log-scales ``1.9 tanh(0.1 s)``), global affine with softplus
scale, soft permutations (fixed random rotations); Adam lr 2e-4 with 2 warm-up meta-epochs
from lr/10 and cosine decay to lr * 1e-3 (``lr_schedule="cosine"``; schedule spread over
this run's steps, 25 of the authors' 8-epoch meta-epochs = 200 epochs by default).

Deviations: WRN50 ``layer2..layer4`` become EfficientNet-Lite0 ``stage3, stage5, stage7``
(strides 8/16/32, channels 40/112/320; anomalib's mapping in the reference script);
``backbone="wide_resnet50_2", taps=("layer2", "layer3", "layer4")`` with the user's weights
is the paper's setting. Fibre batches: the authors shuffle the fibres of an image batch and
take one optimiser step per 256 of them in a Python loop (and one decoder at a time); here
one vectorised step per image batch uses ``fibre_batch`` random fibres per level (0: all of
them), every decoder in the same step (their parameters are disjoint, so the summed loss
gives each its own gradient). The training engine makes one optimiser update per image
batch, so a run makes ``B h w / 256`` times fewer updates than the authors' per level: short
runs need a larger learning rate than 2e-4 (the tests use 5e-3). Normalisation: the
authors subtract the maximum over the whole test set of each level's ``log p / C``; a
test-set statistic cannot enter a per-batch score, so ``calibrate`` stores the maximum over
the training images and positions above it count as probability 1. The authors upsample
with ``align_corners=True``; here half-pixel centres (the library's shared upsampling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax.methods.base import State, register
from anomjax.methods.flows.common import (
    all_in_one_flow,
    cosine_with_warmup,
    encoder_features,
    encoder_state,
    feature_shapes,
    init_all_in_one,
    pytorch_adam,
)
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_rgb
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.flows import (
    FullyConnected,
    all_in_one_split,
    gaussian_log_prob,
    positional_encoding_2d,
    random_rotation,
)
from anomjax.scoring import to_scores, upsample
from anomjax.types import Batch, Scores


@register
@dataclasses.dataclass(frozen=True)
class CFlow(TrainedMethod):
    """CFLOW-AD: conditional flow decoders over encoder fibres (see the module docstring).

    Attributes:
      backbone, backbone_weights: the frozen encoder and optional weights file.
      taps: encoder levels, one decoder each.
      condition_dim: positional-encoding channels (paper: 128).
      coupling_blocks: all-in-one blocks per decoder (paper: 8).
      clamp: coupling clamp (authors: 1.9).
      fibre_batch: fibres per level per step (0: every fibre of the image batch).
      learning_rate: Adam (authors: 2e-4); ``lr_schedule``: ``"cosine"`` (authors) or
        ``"constant"`` (anomalib).
      sigma: Gaussian smoothing of the map in input pixels (authors: none).
    """

    name: ClassVar[str] = "cflow"
    default_epochs: ClassVar[int] = 200  # 25 meta-epochs of 8 epochs (authors' config)

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ("stage3", "stage5", "stage7")
    condition_dim: int = hyper(128, low=4, high=1024)
    coupling_blocks: int = hyper(8, low=1, high=64)
    clamp: float = hyper(1.9, low=0.0, high=20.0, low_open=True)
    fibre_batch: int = hyper(0, low=0)
    learning_rate: float = hyper(2e-4, low=0.0, high=1.0, low_open=True)
    lr_schedule: str = hyper("cosine", choices=("cosine", "constant"))
    sigma: float = hyper(0.0, low=0.0, high=64.0)

    def _subnets(self, channels: int) -> list[FullyConnected]:
        d = all_in_one_split(channels) + self.condition_dim
        return [FullyConnected(2 * (channels // 2), (2 * d,))
                for _ in range(self.coupling_blocks)]

    def _decoder(self, params: dict[str, Any], level: int, channels: int,
                 context: jax.Array) -> Any:
        rotations = [random_rotation(1000 * level + k, channels)
                     for k in range(self.coupling_blocks)]
        return all_in_one_flow(params, self._subnets(channels), channels, self.clamp,
                               rotations, context=context, soft_permutation=True)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Frozen encoder, one decoder per level, and ``reference`` (per-level normaliser,
        0 until :meth:`calibrate`)."""
        check_rgb(self.name, images)
        if self.condition_dim % 4:
            raise ValueError(f"cflow: condition_dim must be a multiple of 4, got "
                             f"{self.condition_dim}")
        frozen = encoder_state(self.name, self.backbone, self.backbone_weights, self.taps)
        shapes = feature_shapes(self.backbone, frozen, images, self.taps)
        keys = jax.random.split(key, len(shapes))
        params = {f"level{lv}": init_all_in_one(
            keys[lv], self._subnets(s.shape[-1]), jnp.zeros((1, s.shape[-1])), s.shape[-1],
            jnp.zeros((1, self.condition_dim))) for lv, s in enumerate(shapes)}
        return {"params": params, "frozen": frozen,
                "reference": jnp.zeros((len(shapes),), jnp.float32)}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam; the authors' warm-up + cosine schedule over ``total_steps`` (or constant)."""
        lr: Any = self.learning_rate
        if self.lr_schedule == "cosine":
            lr = cosine_with_warmup(self.learning_rate, total_steps, warmup_share=2 / 25)
        return pytorch_adam(lr)

    def _fibres(self, feats: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``[B, h, w, C]`` -> fibres ``[B h w, C]`` and their positional encodings."""
        b, h, w, c = feats.shape
        context = jnp.broadcast_to(jnp.asarray(positional_encoding_2d(self.condition_dim, h, w)),
                                   (b, h, w, self.condition_dim))
        return feats.reshape(-1, c), context.reshape(-1, self.condition_dim)

    def _log_prob(self, params: dict[str, Any], level: int, fibres: jax.Array,
                  context: jax.Array) -> jax.Array:
        """``log p / C`` of ``fibres [N, C]`` under decoder ``level``."""
        c = fibres.shape[-1]
        z, log_det = self._decoder(params[f"level{level}"], level, c,
                                   context).forward_and_log_det(fibres)
        return gaussian_log_prob(z, log_det) / c

    def _log_prob_maps(self, params: dict[str, Any], state: State,
                       images: jax.Array) -> list[jax.Array]:
        """``log p / C`` per position ``[B, h_l, w_l]`` per level (one encoder pass)."""
        out = []
        for level, f in enumerate(self.frozen_features(state, images)):
            out.append(self._log_prob(params, level, *self._fibres(f)).reshape(f.shape[:3]))
        return out

    def frozen_features(self, state: State, images: jax.Array) -> list[jax.Array]:
        """The frozen encoder's features ``[B, h, w, c]`` per tap (a function of the image
        alone, so the training engine computes them once per training image:
        ``anomjax.train.frozen_cache``)."""
        return encoder_features(self.backbone, state, images, self.taps)

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: list[jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Sum over levels of the mean ``-log sigmoid(log p / C)`` of the step's fibres;
        ``frozen``: the encoder's features when the engine cached them."""
        total, aux = jnp.zeros((), jnp.float32), {}
        feats = self.frozen_features(state, images) if frozen is None else frozen
        keys = jax.random.split(key, len(feats))
        for level, f in enumerate(feats):
            fibres, context = self._fibres(f)
            if 0 < self.fibre_batch < fibres.shape[0]:
                pick = jax.random.permutation(keys[level], fibres.shape[0])[:self.fibre_batch]
                fibres, context = fibres[pick], context[pick]
            log_p = self._log_prob(params, level, fibres, context)
            nll = jnp.mean(-jax.nn.log_sigmoid(log_p))
            aux[f"loss_level{level}"] = nll
            total = total + nll
        return total, aux

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """``reference``: the maximum of each level's ``log p / C`` over the training
        images (the normaliser the authors take over the test set)."""
        maxima = jax.jit(lambda st, x: jnp.stack(
            [jnp.max(m) for m in self._log_prob_maps(st["params"], st, x)]))
        best = np.full(len(self.taps), -np.inf)
        for batch in batches:
            best = np.maximum(best, np.asarray(maxima(state, jnp.asarray(batch.images,
                                                                         jnp.float32))))
        return {**state, "reference": jnp.asarray(best, jnp.float32)}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = ``-sum_l upsample(exp(log p_l / C - reference_l))``; image = its max."""
        check_rgb(self.name, images)
        size = images.shape[1:3]
        total = jnp.zeros((images.shape[0], *size), jnp.float32)
        for level, log_p in enumerate(self._log_prob_maps(state["params"], state, images)):
            prob = jnp.exp(jnp.minimum(log_p - state["reference"][level], 0.0))
            total = total + upsample(prob, size)
        return to_scores(-total, size, self.sigma)
