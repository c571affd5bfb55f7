"""STPM: Student-Teacher feature Pyramid Matching (Wang et al., BMVC 2021).

A pretrained teacher and a student of the same architecture, randomly initialised, see the
same image. At each of the feature levels ``l`` the features are L2-normalised over channels
and the student is trained to match the teacher. The loss is the authors' code's
(``gdwang08/STFPM`` ``main.py``, ``train_val``):

    loss_l = mean over the images b and positions (i, j) of || t_hat - s_hat ||^2

summed over the levels: a mean over the batch, so the learning rate does not depend on the
batch size. The paper writes the same loss with a factor 1/2 (``1/(2 h w) sum_ij``); the code,
whose learning rate 0.4 we keep, has none. At test time the per-level maps
``|| t_hat - s_hat ||^2`` ``[B, h_l, w_l]`` (again without the paper's 1/2, as the authors'
``test``) are bilinearly upsampled to the input size and multiplied; the product is smoothed
with the shared Gaussian (``sigma``) and its maximum is the image score.

Paper/authors' defaults kept: SGD with learning rate 0.4, momentum 0.9, weight decay 1e-4,
100 epochs (``default_epochs``), batch size 32 (``default_batch_size``), 256 x 256 images
(``default_image_size``); three feature levels of strides 4, 8 and 16; the student is trained
with batch statistics in its BatchNorm layers (PyTorch ``train()`` mode, running-statistics
momentum 0.1 in PyTorch's convention, ``bn_momentum=0.9`` in Flax's) and scored with its
running statistics.

``precise_bn=True`` (on by default, not in the paper; ``False`` is the paper's behaviour)
recomputes the student's running statistics after the last epoch over the training images
with the final weights (Wu & Johnson 2021; see ``anomjax.nn.batch_stats``), from the full
batches only. With lr 0.4 the weights still move fast after a few epochs and the
exponential running averages lag behind them; one training scored both ways localised far
better with the recomputed statistics (measured: ``experiments/method_notes.md#stpm``).

Deviations: the paper's network is ResNet-18 (``layer1..layer3``), whose ImageNet weights
are not available offline; the default is EfficientNet-Lite0 with taps ``stage2, stage3,
stage5`` (strides 4/8/16, channels 24/40/112: the ends of the stride-4, -8 and -16 parts of
the network, as ``layer1..layer3`` are in ResNet-18). ``backbone="resnet18",
taps=("layer1", "layer2", "layer3")`` with the user's torchvision weights
(``backbone_weights=``) is the paper's setting. The student is the backbone with random
weights (``load_backbone(..., pretrained=False)``), cut after the deepest tap (the teacher
too). The authors hold out 20 % of the training images and keep the epoch with the lowest
validation loss; here every training image is used and the last epoch is kept. The final
Gaussian smoothing (``sigma``, 4 by default; 0 turns it off) is the library's shared
post-processing, not in the paper; it also changes the image score (the maximum is taken
after it). The authors multiply the level maps at 64 x 64 and then resize; here they are
multiplied at the input size (the same at 64 px, where the parity test runs).
``tests/parity/test_parity_stpm.py`` compares teacher and student features, loss, gradients,
one SGD step, map (``sigma=0``) and image score with the authors' code (ResNet-18; see
``experiments/parity/distillation.md``). On the CPU backend the Lite backbones' depthwise
convolutions run as exact shifted sums (see ``anomjax.nn.depthwise``), only for speed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from anomjax.backbones import backbone_names, load_backbone
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_rgb
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.batch_stats import pooled_batch_stats
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.nn.teacher import check_taps, tap_variables, teacher, teacher_variables
from anomjax.scoring import gaussian_blur, upsample
from anomjax.types import Batch, Scores

BACKBONES = tuple(backbone_names())


def normalize_channels(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x [..., C]`` divided by its L2 norm over channels (at least ``eps``)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps).astype(x.dtype)


def level_distance(teacher_feat: jax.Array, student_feat: jax.Array) -> jax.Array:
    """``|| t_hat - s_hat ||^2`` per position (authors' code, no 1/2):
    ``[B, h, w, C] x 2 -> [B, h, w]``."""
    diff = normalize_channels(teacher_feat) - normalize_channels(student_feat)
    return jnp.sum(jnp.square(diff.astype(jnp.float32)), axis=-1)


def _full_batches(batches: Iterable[Batch]) -> Iterator[jax.Array]:
    """The images ``[B, H, W, 3]`` of ``batches`` that have the first batch's size."""
    size = None
    for batch in batches:
        size = len(batch.images) if size is None else size
        if len(batch.images) == size:
            yield jnp.asarray(batch.images, jnp.float32)


@register
@dataclasses.dataclass(frozen=True)
class STPM(TrainedMethod):
    """Student-teacher feature pyramid matching (see the module docstring).

    Attributes:
      backbone: teacher (and student) architecture, a name of ``anomjax.backbones``.
      taps: the feature levels, shallow to deep.
      backbone_weights: the teacher's pretrained weights file (``None``: the bundled ones).
      learning_rate, momentum, weight_decay: SGD as in the paper.
      bn_momentum: Flax momentum of the student's BatchNorm running statistics.
      precise_bn: recompute the student's running statistics after training (see above).
      sigma: Gaussian smoothing of the final map, in input pixels.
      sigma_side: image side at which the smoothing sigma holds (the authors' 256 px); other sizes
        scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "stpm"
    default_epochs: ClassVar[int] = 100  # the paper's
    default_batch_size: ClassVar[int] = 32  # the paper's and the authors' code's
    default_image_size: ClassVar[int] = 256  # the paper's

    backbone: str = hyper("efficientnet_lite0", choices=BACKBONES)
    taps: tuple[str, ...] = hyper(("stage2", "stage3", "stage5"))  # checked by init
    backbone_weights: str | None = hyper(None)
    learning_rate: float = hyper(0.4, low=0.0, high=10.0, low_open=True)
    momentum: float = hyper(0.9, low=0.0, high=1.0, high_open=True)
    weight_decay: float = hyper(1e-4, low=0.0, high=1.0)
    bn_momentum: float = hyper(0.9, low=0.0, high=1.0)
    precise_bn: bool = hyper(True)
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Teacher variables (pretrained, pruned to the taps) and a random student.

        Returns ``{"params", "batch_stats"}`` of the student and ``{"frozen": {"teacher"}}``.
        """
        check_rgb(self.name, images)
        taps = check_taps(self.name, self.backbone, self.taps)
        _, random = load_backbone(self.backbone, pretrained=False, key=key)
        student = tap_variables(self.backbone, random, taps)
        full = teacher_variables(self.backbone, self.backbone_weights)
        frozen = tap_variables(self.backbone, full, taps)
        return {"params": student["params"], "batch_stats": student["batch_stats"],
                "frozen": {"teacher": frozen}}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """SGD with momentum and (PyTorch-style, coupled) weight decay; constant rate."""
        del total_steps  # the paper uses a constant learning rate
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.sgd(self.learning_rate, momentum=self.momentum))

    def _features(self, variables: dict[str, Any], images: jax.Array, *, train: bool = False,
                  batch_only: bool = False) -> tuple[dict[str, jax.Array], Any]:
        """``{tap: [B, h, w, c]}`` of the backbone with ``variables``; with ``train`` the
        BatchNorm layers use batch statistics and the new running ones are returned too
        (``batch_only``: the statistics of this batch alone, biased variance).
        """
        interceptors = []
        if train:
            interceptors.append(batch_norm_in_train_mode(0.0, unbiased=False) if batch_only
                                else batch_norm_in_train_mode(self.bn_momentum))
        out = apply_with(teacher(self.backbone).module, variables, images,
                         interceptors=interceptors, mutable=["batch_stats"] if train else False,
                         taps=tuple(self.taps), logits=False)
        return (out[0], out[1]["batch_stats"]) if train else (out, None)

    def frozen_features(self, state: State, images: jax.Array) -> dict[str, jax.Array]:
        """The frozen teacher's ``{tap: [B, h, w, c]}`` (no gradient reaches the teacher).

        A function of the image alone (STPM does not augment), so the training engine
        computes it once per training image (``anomjax.train.frozen_cache``).
        """
        feats, _ = self._features(jax.lax.stop_gradient(state["frozen"]["teacher"]), images)
        return {t: feats[t] for t in self.taps}

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, Any]]:
        """Pyramid matching loss of ``images [B, H, W, 3]`` (summed over levels, mean over the
        batch and positions); student in train mode. ``frozen``: the teacher's features of
        ``images`` when the engine cached them (else they are computed here)."""
        del key  # STPM's training is deterministic given the batch
        teacher_out = self.frozen_features(state, images) if frozen is None else frozen
        t_feats = [teacher_out[t] for t in self.taps]
        s_out, batch_stats = self._features(
            {"params": params, "batch_stats": state["batch_stats"]}, images, train=True)
        aux: dict[str, Any] = {"batch_stats": batch_stats}
        total = jnp.zeros((), jnp.float32)
        for tap, t in zip(self.taps, t_feats, strict=True):
            level = jnp.mean(level_distance(t, s_out[tap]))  # over images and positions
            aux[f"loss_{tap}"] = level
            total = total + level
        return total, aux

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """With ``precise_bn``, the student's running statistics recomputed over ``batches``
        (the training images) with the trained weights; otherwise ``state`` unchanged.

        Only batches of the first batch's size are pooled (one compilation; an incomplete
        last batch is left out, as in training).
        """
        if not self.precise_bn:
            return state
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        # The weights are an argument, not a constant folded into the compiled program.
        stats_jit = jax.jit(lambda v, x: self._features(v, x, train=True, batch_only=True)[1])
        return {**state, "batch_stats": pooled_batch_stats(
            lambda x: stats_jit(variables, x), _full_batches(batches))}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Product of the upsampled per-level maps, smoothed; image score = its maximum."""
        check_rgb("stpm", images)
        t_feats = self.frozen_features(state, images)
        s_feats, _ = self._features({"params": state["params"],
                                     "batch_stats": state["batch_stats"]}, images)
        size = images.shape[1:3]
        maps = jnp.ones((images.shape[0], *size), jnp.float32)
        for tap in self.taps:
            maps = maps * upsample(level_distance(t_feats[tap], s_feats[tap]), size)
        maps = gaussian_blur(maps, self.sigma, self.sigma_side)
        return Scores(image=jnp.max(maps, axis=(1, 2)), maps=maps)
