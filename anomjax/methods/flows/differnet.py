"""DifferNet (Rudolph, Wandt & Rosenhahn, "Same Same But DifferNet: Semi-Supervised Defect
Detection with Normalizing Flows", WACV 2021).

An image is described by the globally average-pooled features of a frozen CNN at three
image scales (full, 1/2, 1/4), concatenated into ``y [D]``. A flow of 8 blocks (fixed random
permutation, then a GLOW coupling transforming both halves with fully connected subnets of
three hidden layers and log-scales ``clamp * 0.636 * atan(s / clamp)``) maps ``y`` to ``z``;
training minimises ``mean(0.5 ||z||^2 - log|det J|) / D`` over randomly rotated copies of
the training images. The image score is ``mean ||z||^2 / D`` over ``n_transforms_test``
rotated copies of the test image. The map is the paper's gradient map: the gradient of each
copy's negative log-likelihood with respect to its (rotated) input pixels, rotated back,
smoothed with a Gaussian (``grad_sigma``, per channel), its absolute value averaged over the
copies and colour channels, squared (the authors' ``localization.py``).

Authors' defaults kept: 3 scales, 8 coupling blocks, hidden width 2048 (``fc_internal``),
clamp 3, 4 random rotations per training image and 64 at test time, Adam lr 2e-4 with
betas (0.8, 0.8), eps 1e-4, weight decay 1e-5, 192 epochs (24 meta-epochs of 8),
permutation seed ``k`` for block ``k``, gradient-map smoothing sigma 3.

Deviations: the paper's AlexNet ``features`` (256 channels, stride 32) become
EfficientNet-Lite0 ``stage7`` (320 channels, stride 32), so ``D = 960`` instead of 768
(``taps`` takes several, concatenated). Rotations: training copies are rotated by angles
uniform in [-180, 180] degrees (torchvision ``RandomRotation(180)``, nearest neighbour,
zeros outside); test copies by the evenly spaced angles ``360 i / n_transforms_test`` (the
authors' fixed-rotation mode, used for their gradient maps; their AUROC evaluation draws the
test rotations at random), so scores are deterministic. The gradient of each copy is of its
own loss (the authors' batch-mean loss scales every gradient by ``1 / batch``, so their map
is ours divided by ``batch^2``); gradients are rotated back bilinearly (the authors: SciPy
cubic spline; equal at the quarter turns); the gradient is taken with respect to the
``[0, 1]`` image (the authors': the ImageNet-normalised image, whose channels it divides by
their std, 0.229 / 0.224 / 0.225, before the channel mean; equal up to a constant with
Lite0's single scale). Scoring runs ``score_chunk`` images (each with its
``n_transforms_test`` copies, forward and backward) per step of a loop, so memory does not
grow with the evaluation batch (the authors score one image per batch). Parity with the
authors' code (embedding, per coupling output, log-determinant, loss, gradients, one Adam
step, rotated copies, image score and gradient map) is pinned by
``tests/parity/test_parity_differnet.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from anomjax.methods.base import State, register
from anomjax.methods.flows.common import (
    encoder_state,
    feature_shapes,
    nll_per_dim,
    pytorch_adam,
    rotate,
    scale_features,
)
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.flows import (
    FullyConnected,
    SoftClamp,
    bind,
    glow_block,
    init_params,
    random_permutation,
    sequential,
)
from anomjax.precision import full_precision
from anomjax.scoring import gaussian_blur, to_scores
from anomjax.types import Scores


@register
@dataclasses.dataclass(frozen=True)
class DifferNet(TrainedMethod):
    """DifferNet: a flow over multi-scale pooled image features (see the module docstring).

    Attributes:
      backbone, backbone_weights: the frozen feature extractor and optional weights file.
      taps: pooled feature taps (concatenated), per scale.
      n_scales: image scales (full, 1/2, 1/4, ...; paper: 3).
      coupling_blocks, fc_internal, fc_layers: flow depth, subnet width and hidden layers
        (authors: 8, 2048, 3).
      clamp: ``alpha`` of the atan soft clamp (authors: 3).
      n_transforms, n_transforms_test: rotated copies per image in training / scoring
        (authors: 4 / 64).
      learning_rate, weight_decay: Adam (authors: 2e-4, 1e-5; betas 0.8, eps 1e-4).
      grad_sigma: Gaussian smoothing of the gradients (authors: 3), ``sigma`` of the final
        map (authors: none).
      sigma_side: image side at which the smoothing sigma holds (the authors' 448 px); other sizes
        scale it with their shorter side (0: pixels at every size).
      score_chunk: images scored per step (each with ``n_transforms_test`` copies run forward
        and backward together); the results do not depend on it, the memory does.
    """

    name: ClassVar[str] = "differnet"
    default_epochs: ClassVar[int] = 192  # 24 meta-epochs of 8 sub-epochs (authors' config)
    default_batch_size: ClassVar[int] = 24  # the authors' config (x 4 rotated copies)

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ("stage7",)
    n_scales: int = hyper(3, low=1, high=5)
    coupling_blocks: int = hyper(8, low=1, high=64)
    fc_internal: int = hyper(2048, low=1)
    fc_layers: int = hyper(3, low=1, high=8)
    clamp: float = hyper(3.0, low=0.0, high=20.0, low_open=True)
    n_transforms: int = hyper(4, low=1, high=256)
    n_transforms_test: int = hyper(64, low=1, high=512)
    learning_rate: float = hyper(2e-4, low=0.0, high=1.0, low_open=True)
    weight_decay: float = hyper(1e-5, low=0.0, high=1.0)
    grad_sigma: float = hyper(3.0, low=0.0, high=64.0)
    sigma: float = hyper(0.0, low=0.0, high=64.0)
    sigma_side: int = hyper(448, low=0)
    score_chunk: int = hyper(1, low=1, high=4096)

    def _subnets(self, dim: int) -> tuple[FullyConnected, FullyConnected]:
        hidden = (self.fc_internal,) * self.fc_layers
        half = dim // 2
        return FullyConnected(2 * half, hidden), FullyConnected(2 * (dim - half), hidden)

    def _flow(self, params: dict[str, Any], dim: int) -> Any:
        first, second = self._subnets(dim)
        clamp = SoftClamp("atan", self.clamp)
        blocks = []
        for k in range(self.coupling_blocks):
            p = params[f"block{k}"]
            blocks += glow_block(bind(first, p["first"]), bind(second, p["second"]), dim,
                                 clamp, random_permutation(k, dim))
        return sequential(blocks)

    def _check(self, images: Any) -> None:
        check_images(self.name, images, multiple=2 ** (self.n_scales - 1),
                     why=f"{self.n_scales} scales halve it {self.n_scales - 1} times")

    def _embed(self, state: State, images: jax.Array) -> jax.Array:
        """``[N, H, W, 3] -> [N, D]``: pooled taps at every scale, concatenated."""
        scales = scale_features(self.backbone, state, images, self.taps, self.n_scales)
        return jnp.concatenate([jnp.mean(f, axis=(1, 2)) for feats in scales for f in feats],
                               axis=-1)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Frozen extractor and the flow's subnets (PyTorch's default initialisation)."""
        self._check(images)
        frozen = encoder_state(self.name, self.backbone, self.backbone_weights, self.taps)
        dims = [s.shape[-1] for s in feature_shapes(self.backbone, frozen, images, self.taps)]
        return {"params": self.flow_params(key, self.n_scales * sum(dims)), "frozen": frozen}

    def flow_params(self, key: jax.Array, dim: int) -> dict[str, Any]:
        """``{"block{k}": {"first", "second"}}``: the subnets' params of a flow over ``dim``
        features (PyTorch's default initialisation)."""
        first, second = self._subnets(dim)
        half = dim // 2
        keys = jax.random.split(key, 2 * self.coupling_blocks)
        return {f"block{k}": {
            "first": init_params(first, keys[2 * k], jnp.zeros((1, dim - half))),
            "second": init_params(second, keys[2 * k + 1], jnp.zeros((1, half)))}
            for k in range(self.coupling_blocks)}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """The authors' Adam: lr 2e-4, betas (0.8, 0.8), eps 1e-4, weight decay 1e-5."""
        del total_steps
        return pytorch_adam(self.learning_rate, b1=0.8, b2=0.8, eps=1e-4,
                            weight_decay=self.weight_decay)

    def _nll(self, params: dict[str, Any], state: State, images: jax.Array,
             scoring: bool = False) -> tuple[jax.Array, jax.Array]:
        """Per-copy ``(0.5 ||z||^2 - log_det) / D`` and ``mean z^2`` of ``images [N, ...]``;
        ``scoring``: the flow at full precision (it decides the scores)."""
        y = self._embed(state, images)
        with full_precision(scoring):
            z, log_det = self._flow(params, y.shape[-1]).forward_and_log_det(y)
        return nll_per_dim(z, log_det), jnp.mean(jnp.square(z), axis=-1)

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean NLL per dimension over ``n_transforms`` random rotations of each image."""
        copies = jnp.repeat(images, self.n_transforms, axis=0)
        angles = jax.random.uniform(key, (copies.shape[0],), minval=-180.0, maxval=180.0)
        nll, _ = self._nll(params, state, rotate(copies, angles))
        return jnp.mean(nll), {}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Image score = mean ``z^2`` over the rotated copies; map = the gradient map. Runs
        ``score_chunk`` images per step (:meth:`_score_chunk`)."""
        self._check(images)
        b, h, w, c = images.shape
        chunk = min(self.score_chunk, b)
        n = -(-b // chunk)
        padded = jnp.concatenate([images, jnp.zeros((n * chunk - b, h, w, c), images.dtype)])
        maps, image = jax.lax.map(lambda x: self._score_chunk(state, x),
                                  padded.reshape(n, chunk, h, w, c))
        return to_scores(maps.reshape(-1, h, w)[:b], (h, w), self.sigma, sigma_side=self.sigma_side,
                         image_score=image.reshape(-1)[:b])

    def _score_chunk(self, state: State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Gradient maps ``[B, H, W]`` and image scores ``[B]`` of ``images [B, H, W, 3]``
        from their ``n_transforms_test`` copies, all in one program."""
        b, h, w, _ = images.shape
        t = self.n_transforms_test
        angles = jnp.tile(jnp.arange(t, dtype=jnp.float32) * 360.0 / t, b)
        copies = rotate(jnp.repeat(images, t, axis=0), angles)

        def total_nll(x: jax.Array) -> tuple[jax.Array, jax.Array]:
            nll, z2 = self._nll(state["params"], state, x, scoring=True)
            return jnp.sum(nll), z2

        grads, z2 = jax.grad(total_nll, has_aux=True)(copies)
        grads = rotate(grads.astype(jnp.float32), -angles, method="bilinear")  # [B T, H, W, 3]
        channels = jnp.moveaxis(grads, -1, 1).reshape(-1, h, w)
        smooth = gaussian_blur(channels, self.grad_sigma, self.sigma_side).reshape(b, t * 3, h, w)
        maps = jnp.square(jnp.mean(jnp.abs(smooth), axis=1))
        return maps, jnp.mean(z2.reshape(b, t), axis=1)
