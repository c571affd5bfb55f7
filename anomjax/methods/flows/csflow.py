"""CS-Flow (Rudolph, Wehrbein, Rosenhahn & Wandt, "Fully Convolutional Cross-Scale-Flows for
Image-based Defect Detection", WACV 2022).

A frozen CNN maps the image at three scales (full, 1/2, 1/4) to feature maps
``y_s [h / 2^s, w / 2^s, C]``. One flow transforms the three jointly: each of its 4 blocks
permutes every scale's channels (fixed, random) and applies a GLOW coupling to both channel
halves of all scales at once, whose subnets are cross-scale convolutions (every scale's
scale/shift sees its neighbouring scales) with log-scales ``clamp * 0.636 * atan(s /
clamp)``. Training minimises ``mean(0.5 ||z||^2 - log|det J|) / D`` over all dimensions of
the three scales. The image score is the mean of ``z^2 / 2`` over all positions, channels
and scales (the authors' ``train.py``). The map (``map_mode``) is built from the per-position
channel means of ``z^2``, upsampled bilinearly (half-pixel centres) to the input:

* ``"finest"`` (default, the authors' ``evaluate.py``): the finest scale's ``mean_c z_0^2``;
* ``"product"`` (anomalib's ``AnomalyMapGenerator``, mode ``ALL``): the product over the
  three scales of the upsampled ``mean_c z_s^2``;
* ``"mean"`` (ours): the mean over the three scales of the upsampled ``mean_c z_s^2 / 2``.

Authors' defaults kept: 3 scales, 4 coupling blocks, hidden width 1024, kernel 3 in every
block but the last (5), leaky-ReLU slope 0.1, learned output gains ``gamma`` starting at 0,
clamp 3, Adam lr 2e-4, eps 1e-4, weight decay 1e-5, gradients clipped to norm 1, 240 epochs
(4 meta-epochs of 60), permutation seed ``k`` for block ``k`` (scales drawn in turn).

Deviations: EfficientNet-B5's stride-32 features of the 768 px image (304 channels, maps
24/12/6) become EfficientNet-Lite0 ``stage6`` (stride 32, 192 channels); the image size must
be a multiple of 128 so that the three maps halve exactly. Parity with the authors' code
(per coupling output, the whole chain's log-determinant, loss, gradients, one Adam step, maps
and scores) is pinned by ``tests/parity/test_parity_csflow.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anomjax.methods.base import State, register
from anomjax.methods.flows.common import encoder_state, nll_per_dim, pytorch_adam, scale_features
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.flows import (
    CrossScaleConv,
    MultiScaleCoupling,
    Permute,
    SoftClamp,
    bind,
    init_params,
    pack,
    sequential,
    unpack,
)
from anomjax.nn.teacher import teacher
from anomjax.precision import full_precision
from anomjax.scoring import to_scores, upsample
from anomjax.types import Scores

N_SCALES = 3  # the cross-scale convolutions connect exactly three scales
MAP_MODES = ("finest", "product", "mean")


def parallel_permutation(seed: int, shapes: list[tuple[int, int, int]]) -> np.ndarray:
    """One flat permutation of :func:`~anomjax.nn.flows.pack`-ed maps that permutes the
    channels of each scale, drawn as the authors' ``ParallelPermute``: ``np.random.seed(seed)``,
    then one permutation per scale in turn."""
    rng = np.random.RandomState(seed)
    out, offset = [], 0
    for h, w, c in shapes:
        perm = rng.permutation(c)
        index = np.arange(h * w * c).reshape(h, w, c)[..., perm]
        out.append(index.ravel() + offset)
        offset += h * w * c
    return np.concatenate(out)


@register
@dataclasses.dataclass(frozen=True)
class CSFlow(TrainedMethod):
    """CS-Flow: one fully convolutional flow over three scales (see the module docstring).

    Attributes:
      backbone, backbone_weights: the frozen feature extractor and optional weights file.
      tap: the feature tap (stride 32 by the paper's choice).
      coupling_blocks: flow depth (authors: 4); the last block uses ``last_kernel_size``.
      hidden: cross-convolution width (authors: 1024).
      clamp: ``alpha`` of the atan soft clamp (authors: 3).
      learning_rate, weight_decay, max_grad_norm: Adam (authors: 2e-4, 1e-5, clip 1).
      sigma: Gaussian smoothing of the map in input pixels (authors: none).
      sigma_side: image side at which the smoothing sigma holds (the authors' 768 px); other sizes
        scale it with their shorter side (0: pixels at every size).
      map_mode: how the three scales' latents form the map (see the module docstring):
        ``"finest"`` (authors), ``"product"`` (anomalib) or ``"mean"`` (ours).
    """

    name: ClassVar[str] = "csflow"
    default_epochs: ClassVar[int] = 240  # 4 meta-epochs of 60 sub-epochs (authors' config)

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    tap: str = "stage6"
    coupling_blocks: int = hyper(4, low=1, high=32)
    hidden: int = hyper(1024, low=1)
    kernel_size: int = hyper(3, choices=(1, 3, 5, 7))
    last_kernel_size: int = hyper(5, choices=(1, 3, 5, 7))
    clamp: float = hyper(3.0, low=0.0, high=20.0, low_open=True)
    learning_rate: float = hyper(2e-4, low=0.0, high=1.0, low_open=True)
    weight_decay: float = hyper(1e-5, low=0.0, high=1.0)
    max_grad_norm: float = hyper(1.0, low=0.0, high=1e6, low_open=True)
    sigma: float = hyper(0.0, low=0.0, high=64.0)
    sigma_side: int = hyper(768, low=0)
    map_mode: str = hyper("finest", choices=MAP_MODES)

    def _stride(self) -> int:
        info = teacher(self.backbone).taps.get(self.tap)
        return 32 if info is None else info.stride

    def _check(self, images: Any) -> None:
        check_images(self.name, images, multiple=self._stride() * 2 ** (N_SCALES - 1),
                     why=f"tap {self.tap} at {N_SCALES} halving scales")

    def _subnets(self, channels: int) -> list[tuple[CrossScaleConv, CrossScaleConv]]:
        half = channels // 2
        out = []
        for k in range(self.coupling_blocks):
            kernel = self.last_kernel_size if k == self.coupling_blocks - 1 else self.kernel_size
            out.append((CrossScaleConv(2 * half, self.hidden, kernel),
                        CrossScaleConv(2 * (channels - half), self.hidden, kernel)))
        return out

    def frozen_features(self, state: State, images: jax.Array) -> list[jax.Array]:
        """The frozen encoder's features of the tap at the three image scales
        ``[B, h / 2^s, w / 2^s, C]`` (a function of the image alone, so the training engine
        computes them once per training image: ``anomjax.train.frozen_cache``)."""
        scales = scale_features(self.backbone, state, images, (self.tap,), N_SCALES)
        return [feats[0] for feats in scales]

    def _flow(self, params: dict[str, Any], shapes: list[tuple[int, int, int]]) -> Any:
        channels = shapes[0][-1]
        clamp = SoftClamp("atan", self.clamp)
        blocks = []
        for k, (first, second) in enumerate(self._subnets(channels)):
            p = params[f"block{k}"]
            blocks += [Permute(parallel_permutation(k, shapes)),
                       MultiScaleCoupling(bind(first, p["first"]), shapes, channels // 2, clamp,
                                          transform="first"),
                       MultiScaleCoupling(bind(second, p["second"]), shapes, channels // 2,
                                          clamp, transform="second")]
        return sequential(blocks)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Frozen extractor and the cross-scale subnets (PyTorch's initialisation, gamma 0)."""
        self._check(images)
        frozen = encoder_state(self.name, self.backbone, self.backbone_weights, (self.tap,))
        sample = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)
        shapes = [m.shape[1:] for m in jax.eval_shape(self.frozen_features, {"frozen": frozen},
                                                      sample)]
        return {"params": self.flow_params(key, shapes), "frozen": frozen}

    def flow_params(self, key: jax.Array, shapes: list[tuple[int, int, int]]
                    ) -> dict[str, Any]:
        """``{"block{k}": {"first", "second"}}``: the cross-scale subnets' params for feature
        maps of event ``shapes`` ``[(h_s, w_s, C)]`` (PyTorch's initialisation, gamma 0)."""
        channels = shapes[0][-1]
        half = channels // 2
        keys = jax.random.split(key, 2 * self.coupling_blocks)
        params = {}
        for k, (first, second) in enumerate(self._subnets(channels)):
            params[f"block{k}"] = {
                "first": init_params(first, keys[2 * k], tuple(
                    jnp.zeros((1, h, w, channels - half)) for h, w, _ in shapes)),
                "second": init_params(second, keys[2 * k + 1], tuple(
                    jnp.zeros((1, h, w, half)) for h, w, _ in shapes))}
        return params

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """The authors' Adam (eps 1e-4, weight decay 1e-5) after gradient clipping."""
        del total_steps
        return pytorch_adam(self.learning_rate, eps=1e-4, weight_decay=self.weight_decay,
                            max_grad_norm=self.max_grad_norm)

    def _latents(self, params: dict[str, Any], state: State, images: jax.Array,
                 maps: list[jax.Array] | None = None
                 ) -> tuple[jax.Array, jax.Array, list[tuple[int, int, int]]]:
        """Packed latents, log-determinants and the scales' shapes; ``maps``: the encoder's
        features of ``images`` if already computed."""
        maps = self.frozen_features(state, images) if maps is None else maps
        shapes = [tuple(m.shape[1:]) for m in maps]
        z, log_det = self._flow(params, shapes).forward_and_log_det(pack(maps))
        return z, log_det, shapes

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: list[jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``mean_B (0.5 ||z||^2 - log_det) / D`` (the authors' ``get_loss``); ``frozen``: the
        encoder's features when the engine cached them."""
        del key
        z, log_det, _ = self._latents(params, state, images, frozen)
        return jnp.mean(nll_per_dim(z, log_det)), {}

    def score(self, state: State, images: jax.Array,
              frozen: list[jax.Array] | None = None) -> Scores:
        """Image = mean ``z^2 / 2``; map as ``map_mode`` says (module docstring); ``frozen``:
        the encoder's features of ``images`` if already computed."""
        self._check(images)
        size = images.shape[1:3]
        maps = self.frozen_features(state, images) if frozen is None else frozen
        with full_precision():  # the flow decides the scores
            z, _, shapes = self._latents(state["params"], state, images, maps)
        squared = jnp.square(z)
        maps = [upsample(jnp.mean(m, axis=-1), size) for m in unpack(squared, shapes)]
        if self.map_mode == "finest":
            anomaly_map = maps[0]
        elif self.map_mode == "product":
            anomaly_map = jnp.prod(jnp.stack(maps), axis=0)
        else:
            anomaly_map = 0.5 * jnp.mean(jnp.stack(maps), axis=0)
        return to_scores(anomaly_map, size, self.sigma, sigma_side=self.sigma_side,
                         image_score=0.5 * jnp.mean(squared, axis=-1))
