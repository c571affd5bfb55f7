"""DRAEM: a discriminatively trained reconstruction embedding (Zavrtanik, Kristan & Skocaj,
ICCV 2021), optionally with SSPCAB (Ristea et al., CVPR 2022).

Training makes its own anomalies inside the jitted step (:func:`anomjax.data.anomalies.
draem_sample`): a thresholded, rotated Perlin-noise mask selects where an anomaly-source
texture, changed by three random augmenters, is blended into the normal image (half of the
samples stay normal; 30 % of the images are first rotated by up to 90 degrees). The
reconstructive subnetwork maps the augmented image back to the normal one (loss ``L2 + SSIM``,
``1 - SSIM`` with an 11-tap Gaussian window), and the discriminative subnetwork sees the
reconstruction concatenated with the augmented image and segments the anomaly (focal loss,
``gamma = 2``, on its softmax). Test: the map is the softmax probability of the anomaly
class; the image score is the maximum of that map mean-filtered with the authors' ``21 x 21``
window (zero padding counted, PyTorch ``avg_pool2d(21, stride=1, padding=10)``) at their
256 px. By default (``scale_filter=True``) the window scales with the image: ``21 * side /
256`` rounded to an odd size (5 at 64 px, where 21 would be a third of the image);
``scale_filter=False`` keeps the authors' fixed 21 at every size.

Anomaly source: ``texture_dir`` is a folder of texture images (the paper's DTD, not available
offline). Without it the source is, for each sample, with probability ``p_batch_source``
(0.5) the previous training image of the batch and otherwise one of 12 procedural textures of
:mod:`anomjax.data.synthetic` (fabric, metal, wood), which is not in the paper. The textures
are held on the host, never in the train state (so never checkpointed, replicated to the
devices or exported): the hook :meth:`DRAEM.host_inputs` reads and resizes them once per run
(:class:`~anomjax.data.anomalies.TextureSource`), and every training step receives only its
``B`` sources ``[B, H, W, 3]`` uint8, picked uniformly on the host with the generator
:func:`anomjax.train.host_draws.step_rng` of the run's seed and the step, so a resumed run
picks exactly the sources of an uninterrupted one. (In a population the members share each
step's sources, as they share its images.) A run folder written when the textures were in the
state (``frozen["textures"]``) still tests and predicts (scoring never reads that entry);
resuming such a run's training checkpoints is refused: train it again.

As in the authors' code (``train_DRAEM.py``, ``test_DRAEM.py``, ``model_unet.py``,
``loss.py``): widths 128 (reconstructive) and 64 (discriminative), Adam at 1e-4 on both
subnetworks, the rate multiplied by 0.2 at 80 % and 90 % of training (here of the run's
steps), 700 epochs (``default_epochs``), their focal loss (probabilities clamped as
``one_hot`` in ``[1e-5, 1 - 1e-5]``, ``pt + 1e-5``), no smoothing of the pixel map, BatchNorm
in training mode while training, their SSIM (zero padding, ``ssim_padding="zero"``;
``"reflect"`` pads as scikit-image). Deviations: the authors' SSIM takes its value range from
the reconstruction (2 once it dips below -0.5, 255 above 128), here it is always 1; the imgaug
augmenters are re-implemented approximately (see :mod:`anomjax.data.anomalies`); images
must have sides divisible by 32. ``experiments/parity/draem.py`` and
``tests/parity/test_parity_draem.py`` pin the networks, the loss, its gradient, one Adam
step, the map and the score to the authors' code.

SSPCAB (``sspcab=True``): the last block of the reconstructive encoder is replaced by an
SSPCAB layer (:mod:`anomjax.nn.sspcab`) and ``sspcab_lambda * MSE(block output, block input)``
(0.1) joins the loss, as in the SSPCAB authors' DRAEM configuration and anomalib's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from anomjax.data.anomalies import (
    TextureSource,
    draem_sample,
    load_textures,
    synthetic_textures,
)
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.methods.self_supervised.common import mean_filter
from anomjax.methods.self_supervised.unet import ReconstructiveNet, UNet
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.nn.losses import SSIM_PADDINGS, l2_loss, ssim_loss
from anomjax.nn.sspcab import sspcab_loss
from anomjax.scoring import gaussian_blur
from anomjax.types import Scores

HIGHEST = jax.lax.Precision.HIGHEST


def focal_loss(probs: jax.Array, target: jax.Array, gamma: float = 2.0,
               smooth: float = 1e-5) -> jax.Array:
    """DRAEM's focal loss of softmax ``probs [..., K]`` against integer labels ``target
    [...]``: mean of ``-(1 - pt)^gamma log(pt)``, ``pt = sum(clip(one_hot, smooth / (K - 1),
    1 - smooth) * probs) + smooth`` (the authors' ``FocalLoss`` with ``alpha=None``)."""
    k = probs.shape[-1]
    one_hot = jax.nn.one_hot(target, k, dtype=jnp.float32)
    one_hot = jnp.clip(one_hot, smooth / (k - 1), 1.0 - smooth)
    pt = jnp.sum(one_hot * probs.astype(jnp.float32), axis=-1) + smooth
    return jnp.mean(-jnp.power(1.0 - pt, gamma) * jnp.log(pt))


@register
@dataclasses.dataclass(frozen=True)
class DRAEM(TrainedMethod):
    """DRAEM (and DRAEM + SSPCAB), see the module docstring.

    Attributes:
      rec_width, seg_width: base widths of the reconstructive and discriminative networks.
      learning_rate: Adam's rate (both subnetworks).
      texture_dir: folder of anomaly-source textures (DTD); ``None``: batch images and
        procedural textures.
      p_batch_source: without ``texture_dir``, the probability that a sample's source is
        another image of its batch.
      p_anomaly, beta_max, p_rotate: DRAEM's anomaly probability, maximum opacity factor and
        image-rotation probability.
      sspcab, sspcab_lambda: DRAEM + SSPCAB and the weight of SSPCAB's loss.
      filter_size, scale_filter: the mean filter of the image score at 256 px, and whether
        it scales with the image size (:meth:`score_filter`).
      ssim_padding: ``"zero"`` (the authors') or ``"reflect"`` padding of the SSIM loss.
      sigma: optional Gaussian smoothing of the pixel map (0, as in the paper).
      sigma_side: image side at which the smoothing sigma holds (the authors' 256 px); other sizes
        scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "draem"
    default_epochs: ClassVar[int] = 700

    rec_width: int = hyper(128, low=1)
    seg_width: int = hyper(64, low=1)
    learning_rate: float = hyper(1e-4, low=0.0, low_open=True)
    texture_dir: str | None = None
    p_batch_source: float = hyper(0.5, low=0.0, high=1.0)
    p_anomaly: float = hyper(0.5, low=0.0, high=1.0)
    beta_max: float = hyper(0.8, low=0.0, high=1.0)
    p_rotate: float = hyper(0.3, low=0.0, high=1.0)
    sspcab: bool = False
    sspcab_lambda: float = hyper(0.1, low=0.0)
    filter_size: int = hyper(21, low=1)
    scale_filter: bool = True
    ssim_padding: str = hyper("zero", choices=SSIM_PADDINGS)
    sigma: float = hyper(0.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _nets(self, precision: Any = None) -> tuple[ReconstructiveNet, UNet]:
        return (ReconstructiveNet(self.rec_width, 3, self.sspcab, precision),
                UNet(self.seg_width, 2, 5, precision))

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """Both subnetworks (``params``/``batch_stats`` under ``rec`` and ``seg``); the
        textures are not in the state (:meth:`host_inputs`)."""
        check_images(self.name, images, multiple=32)
        size = tuple(images.shape[1:3])
        rec, seg = self._nets()
        k_rec, k_seg = jax.random.split(key)
        x = jnp.zeros((1, *size, 3), jnp.float32)
        v_rec = rec.init(k_rec, x)
        v_seg = seg.init(k_seg, jnp.zeros((1, *size, 6), jnp.float32))
        return {"params": {"rec": v_rec["params"], "seg": v_seg["params"]},
                "batch_stats": {"rec": v_rec["batch_stats"], "seg": v_seg["batch_stats"]}}

    def host_inputs(self, image_size: tuple[int, int]) -> TextureSource:
        """The anomaly-source textures ``[T, H, W, 3]`` uint8 at ``image_size``, held on the
        host; each step draws its ``sources`` ``[B, H, W, 3]`` (module docstring)."""
        return TextureSource(load_textures(self.texture_dir, image_size)
                             if self.texture_dir is not None else
                             synthetic_textures(image_size))

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam; the rate times 0.2 at 80 % and again at 90 % of ``total_steps``."""
        boundaries: dict[int, float] = {}
        for fraction in (0.8, 0.9):  # both factors apply even when the two steps coincide
            step = int(fraction * total_steps)
            boundaries[step] = boundaries.get(step, 1.0) * 0.2
        return optax.adam(optax.piecewise_constant_schedule(self.learning_rate, boundaries))

    def anomaly_batch(self, images: jax.Array, key: jax.Array, sources: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(targets, augmented [B, H, W, 3], masks [B, H, W])`` for a batch (jittable), each
        sample's anomaly cut from ``sources [B, H, W, 3]`` (uint8, or float in ``[0, 1]``;
        without ``texture_dir`` replaced by the previous image of the batch with probability
        ``p_batch_source``)."""
        b = images.shape[0]
        k_self, k_samples = jax.random.split(key)
        if jnp.issubdtype(sources.dtype, jnp.integer):
            sources = sources.astype(jnp.float32) / 255.0
        if self.texture_dir is None and b > 1:
            use_batch = jax.random.bernoulli(k_self, self.p_batch_source, (b,))
            sources = jnp.where(use_batch[:, None, None, None], jnp.roll(images, 1, axis=0),
                                sources)
        sample = jax.vmap(lambda k, x, s: draem_sample(k, x, s, self.p_anomaly, self.beta_max,
                                                       self.p_rotate))
        targets, augmented, masks, _ = sample(jax.random.split(k_samples, b), images,
                                              sources.astype(images.dtype))
        return targets, augmented, masks

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             host: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, Any]]:
        """``L2 + SSIM + focal (+ sspcab_lambda * SSPCAB)`` on a batch of made anomalies;
        ``host["sources"] [B, H, W, 3]`` is the step's draw of :meth:`host_inputs`."""
        return self.batch_loss(params, state,
                               *self.anomaly_batch(images, key, host["sources"]))

    def batch_loss(self, params: Any, state: State, targets: jax.Array, augmented: jax.Array,
                   masks: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """The loss of one made batch: reconstruction targets and augmented inputs ``[B, H, W,
        3]``, anomaly masks ``[B, H, W]`` in {0, 1}; aux holds each term and the new
        ``batch_stats``."""
        rec_net, seg_net = self._nets()
        train = [batch_norm_in_train_mode(0.9)]
        stats = state["batch_stats"]
        (rec, deep_in, deep_out), new_rec = apply_with(
            rec_net, {"params": params["rec"], "batch_stats": stats["rec"]}, augmented,
            interceptors=train, mutable=["batch_stats"])
        logits, new_seg = apply_with(
            seg_net, {"params": params["seg"], "batch_stats": stats["seg"]},
            jnp.concatenate([rec, augmented], axis=-1), interceptors=train,
            mutable=["batch_stats"])
        l2 = l2_loss(rec, targets)
        ssim = ssim_loss(rec, targets, padding=self.ssim_padding)
        focal = focal_loss(jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
                           masks.astype(jnp.int32))
        total = l2 + ssim + focal
        aux: dict[str, Any] = {"l2": l2, "ssim": ssim, "focal": focal,
                               "batch_stats": {"rec": new_rec["batch_stats"],
                                               "seg": new_seg["batch_stats"]}}
        if self.sspcab:
            aux["sspcab"] = sspcab_loss(deep_in, deep_out)
            total = total + self.sspcab_lambda * aux["sspcab"]
        return total, aux

    def reconstruct_and_segment(self, state: State, images: jax.Array
                                ) -> tuple[jax.Array, jax.Array]:
        """``(reconstruction [B, H, W, 3], anomaly probability [B, H, W])`` in eval mode."""
        rec_net, seg_net = self._nets(HIGHEST)
        p, s = state["params"], state["batch_stats"]
        rec, _, _ = rec_net.apply({"params": p["rec"], "batch_stats": s["rec"]}, images)
        logits = seg_net.apply({"params": p["seg"], "batch_stats": s["seg"]},
                               jnp.concatenate([rec, images], axis=-1))
        return rec, jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]

    def score_filter(self, shape: tuple[int, int]) -> int:
        """Side of the image score's mean filter for images of ``shape`` ``(H, W)``:
        ``filter_size`` times the smaller side / 256, rounded to an odd size (at least 1);
        ``filter_size`` itself with ``scale_filter=False``."""
        if not self.scale_filter:
            return self.filter_size
        side = max(1, round(self.filter_size * min(shape) / 256))
        return side if side % 2 else side + 1

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = anomaly probability; image score = max of its :meth:`score_filter` mean
        filter."""
        check_images(self.name, images, multiple=32)
        _, probs = self.reconstruct_and_segment(state, images)
        size = self.score_filter(tuple(images.shape[1:3]))
        image = jnp.max(mean_filter(probs, size), axis=(1, 2))
        return Scores(image=image, maps=gaussian_blur(probs, self.sigma, self.sigma_side))
