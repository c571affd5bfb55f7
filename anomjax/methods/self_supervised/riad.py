"""RIAD: reconstruction by inpainting for visual anomaly detection (Zavrtanik, Kristan &
Skocaj, Pattern Recognition 2021).

Every training image is split into ``k x k`` cells (``k`` drawn from ``cell_sizes`` = 2, 4, 8,
16 pixels per image and step) that are partitioned at random into ``n_masks = 3`` disjoint
sets; a U-Net inpaints each of the three images with one set hidden, and the reconstruction
keeps, in every cell, the inpainting made when that cell was hidden:
``I_r = sum_i M_i * f(I * (1 - M_i))``. The masks are made inside the jitted step
(:func:`anomjax.data.anomalies.riad_masks`). Loss (the paper's):
``L2 + lambda_g MSGMS + lambda_s SSIM`` with ``lambda_g = lambda_s = 1`` (:mod:`anomjax.nn.
losses`). Test: for every ``k`` the image is inpainted from its 3 complementary masks (fixed
partitions, drawn from ``mask_seed``), the error map at that scale is ``1 - MSGMS(I, I_r)``
(per pixel), the maps are averaged over the scales and smoothed with a Gaussian (``sigma``
4); the image score is its maximum.

Adam at 1e-4, 300 epochs (the paper's). In training the U-Net runs once per mask, each pass
of ``B`` images with its own BatchNorm statistics (as the unofficial ``taikiinoue45/RIAD``
runner does). The authors did not publish RIAD's code; the U-Net is the same group's DRAEM
discriminative network (:class:`~anomjax.methods.self_supervised.unet.UNet`, ``depth`` 4
poolings, base width ``width`` = 64, 3 output channels), our choice, as is the cell layout at
image sizes other than the paper's 256 px (``cell_sizes`` stay in pixels).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from anomjax.data.anomalies import riad_masks
from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.images import check_images
from anomjax.methods.protocol import TrainedMethod
from anomjax.methods.self_supervised.unet import UNet
from anomjax.nn.interceptors import apply_with, batch_norm_in_train_mode
from anomjax.nn.losses import SSIM_PADDINGS, l2_loss, msgms_loss, msgms_map, ssim_loss
from anomjax.precision import scored_at_full_precision
from anomjax.scoring import gaussian_blur
from anomjax.types import Scores


@register
@dataclasses.dataclass(frozen=True)
class RIAD(TrainedMethod):
    """RIAD (see the module docstring).

    Attributes:
      width, depth: the U-Net's base width and number of poolings.
      cell_sizes: mask cell sizes ``k`` in pixels.
      n_masks: disjoint masks per scale.
      lambda_gms, lambda_ssim: loss weights.
      ssim_padding: the SSIM windows' padding at the border: ``"reflect"`` (scipy and
        scikit-image) or ``"zero"`` (the unofficial ``taikiinoue45/RIAD`` code).
      learning_rate: Adam's rate.
      mask_seed: seed of the fixed test-time partitions.
      sigma: Gaussian smoothing of the final map.
      sigma_side: image side at which the smoothing sigma holds (the library's convention); other
        sizes scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "riad"
    default_epochs: ClassVar[int] = 300

    width: int = hyper(64, low=1)
    depth: int = hyper(4, low=1, high=7)
    cell_sizes: tuple[int, ...] = hyper((2, 4, 8, 16), low=1)
    n_masks: int = hyper(3, low=2)
    lambda_gms: float = hyper(1.0, low=0.0)
    lambda_ssim: float = hyper(1.0, low=0.0)
    learning_rate: float = hyper(1e-4, low=0.0, low_open=True)
    ssim_padding: str = hyper("reflect", choices=SSIM_PADDINGS)
    mask_seed: int = 0
    sigma: float = hyper(4.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _net(self) -> UNet:
        return UNet(self.width, 3, self.depth)

    def _check(self, images: Any) -> None:
        check_images(self.name, images, multiple=2 ** self.depth, min_size=8)

    def init(self, key: jax.Array, images: jax.Array) -> State:
        """The inpainting U-Net's ``params`` and ``batch_stats``."""
        self._check(images)
        v = self._net().init(key, jnp.zeros((1, *images.shape[1:3], 3), jnp.float32))
        return {"params": v["params"], "batch_stats": v["batch_stats"]}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        del total_steps
        return optax.adam(self.learning_rate)

    def training_masks(self, key: jax.Array, batch: int, shape: tuple[int, int]) -> jax.Array:
        """``[B, n_masks, H, W]``: per image, a partition at a cell size drawn uniformly."""
        k_scale, k_masks = jax.random.split(key)
        scale = jax.random.randint(k_scale, (batch,), 0, len(self.cell_sizes))
        keys = jax.random.split(k_masks, batch)
        every = jnp.stack([jax.vmap(lambda k, c=c: riad_masks(k, shape, c, self.n_masks))(keys)
                           for c in self.cell_sizes], axis=1)  # [B, S, n, H, W]
        return jnp.take_along_axis(every, scale[:, None, None, None, None], axis=1)[:, 0]

    @staticmethod
    def combine(images: jax.Array, masks: jax.Array,
                inpaint: Any) -> tuple[jax.Array, Any]:
        """``sum_i M_i f(I (1 - M_i))`` for images ``[B, H, W, 3]`` and masks ``[B, n, H,
        W]``; ``inpaint: [N, H, W, 3] -> ([N, H, W, 3], extra)`` sees all ``n B`` inputs
        at once."""
        b, n = masks.shape[:2]
        hidden = masks[..., None]  # [B, n, H, W, 1]
        inputs = (images[:, None] * (1.0 - hidden)).reshape(b * n, *images.shape[1:])
        out, extra = inpaint(inputs)
        out = out.reshape(b, n, *images.shape[1:])
        return jnp.sum(out * hidden, axis=1), extra

    def inpaint_passes(self, params: Any, batch_stats: Any, images: jax.Array,
                       masks: jax.Array) -> tuple[jax.Array, Any]:
        """Training reconstruction ``sum_i M_i f(I (1 - M_i))`` ``[B, H, W, 3]`` (masks ``[B,
        n, H, W]``) as the reference runs it: one train-mode pass of the ``B`` images per
        mask, each normalised with its own batch statistics and updating the running ones in
        turn. Returns the reconstruction and the new ``batch_stats``."""
        rec = jnp.zeros(images.shape, jnp.float32)
        for i in range(masks.shape[1]):
            hidden = masks[:, i, ..., None]
            out, new = apply_with(self._net(), {"params": params, "batch_stats": batch_stats},
                                  images * (1.0 - hidden),
                                  interceptors=[batch_norm_in_train_mode(0.9)],
                                  mutable=["batch_stats"])
            rec, batch_stats = rec + out * hidden, new["batch_stats"]
        return rec, batch_stats

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """``L2 + lambda_g MSGMS + lambda_s SSIM`` of the combined inpainting (masks drawn
        from ``key``, see :meth:`masked_loss`)."""
        masks = self.training_masks(key, images.shape[0], images.shape[1:3])
        return self.masked_loss(params, state["batch_stats"], images, masks)

    def masked_loss(self, params: Any, batch_stats: Any, images: jax.Array,
                    masks: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """The training loss for given masks ``[B, n, H, W]``; aux: the three terms and the
        new ``batch_stats``."""
        rec, stats = self.inpaint_passes(params, batch_stats, images, masks)
        l2, gms = l2_loss(rec, images), msgms_loss(rec, images)
        ssim = ssim_loss(rec, images, padding=self.ssim_padding)
        total = l2 + self.lambda_gms * gms + self.lambda_ssim * ssim
        return total, {"l2": l2, "msgms": gms, "ssim": ssim, "batch_stats": stats}

    def test_masks(self, shape: tuple[int, int]) -> list[jax.Array]:
        """The fixed ``[n_masks, H, W]`` partitions of every cell size."""
        key = jax.random.PRNGKey(self.mask_seed)
        return [riad_masks(jax.random.fold_in(key, c), shape, c, self.n_masks)
                for c in self.cell_sizes]

    @scored_at_full_precision
    def score(self, state: State, images: jax.Array) -> Scores:
        """Mean over scales of ``1 - MSGMS(I, I_r(k))``, smoothed; image score = max."""
        self._check(images)
        net = self._net()
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        b = images.shape[0]
        total = jnp.zeros(images.shape[:3], jnp.float32)
        for masks in self.test_masks(images.shape[1:3]):
            rec, _ = self.combine(images, jnp.broadcast_to(masks, (b, *masks.shape)),
                                  lambda x: (net.apply(variables, x), None))
            total = total + msgms_map(images, rec)
        maps = gaussian_blur(total / len(self.cell_sizes), self.sigma, self.sigma_side)
        return Scores(image=jnp.max(maps, axis=(1, 2)), maps=maps)
