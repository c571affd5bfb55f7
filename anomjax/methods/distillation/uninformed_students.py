"""Uninformed Students (Bergmann, Fauser, Sattlegger & Steger, "Uninformed Students:
Student-Teacher Anomaly Detection with Discriminative Latent Embeddings", CVPR 2020).

Per scale (patch sizes 17, 33, 65), a teacher network maps every local patch of an image to a
128-d descriptor, and an ensemble of ``M`` students of the same architecture is trained to
regress the teacher's descriptors, normalised by their per-channel mean and std on the
training images, densely at every pixel. The anomaly score of a pixel is its normalised
regression error ``||mean_i mu_i - y||^2`` plus the ensemble's predictive variance
``mean_i ||mu_i||^2 - ||mean_i mu_i||^2`` (each normalised by its mean and std on the training
images, see ``calibrate``), averaged over the scales.

Teacher pretraining (paper: knowledge distillation of a pretrained ResNet-18's 512-d
descriptors of ImageNet patches, plus a compactness loss decorrelating the descriptor
channels) happens in ``init``, which the training engine gives every training image
(``init_on_all_images``) as a re-iterable of ``[b, H, W, 3]`` batches (a single array also
works), so that they are never all stacked in memory. Every Adam step (lr 2e-4, weight decay
1e-5, ``teacher_batch`` 64 crops) draws fresh random crops from the next batch of images
(cycling through them), resizes them to ``distill_size``, describes them by the frozen
backbone's globally pooled ``distill_tap`` features, and a linear decoder on the teacher's
descriptor regresses those; one batch drives one step of every scale's teacher. The
students then train through :mod:`anomjax.train` (Adam, lr 1e-4, weight decay 1e-5).

Architectures (paper supplement, leaky ReLU slope 5e-3, no activation after the last layer):
p17: conv 6x6/128, 5x5/256, 5x5/256, 4x4/128; p33: conv 5x5/128, max-pool 2, 5x5/256, max-pool
2, 2x2/256, 4x4/128; p65: conv 5x5/128, max-pool 2, 5x5/128, max-pool 2, 5x5/128, max-pool 2,
4x4/256, 1x1/128. Dense output at every pixel, equivalent to running the patch network on
every patch (the paper's fast dense feature extraction), is computed by removing the pooling
strides and dilating the following layers instead (a trous); the image is reflect-padded so
that the maps have the input's size. The teacher is pretrained on single patches with the
strided network (same parameters, same descriptor, a fraction of the cost). With floor pooling
the 33 and 65 networks depend on 32 and 60 pixels of their patch (its first rows and
columns): the dense maps describe the 33- and 65-pixel patches centred on each pixel, as the
paper's patch-centred descriptors (images must be larger than ``(p - 1) / 2`` for the reflect
padding). The students' loss, the teacher normalisation and the score are compared with an
independent implementation of the paper (``tests/parity/test_parity_uninformed_students.py``;
the teacher's pretraining is not).

Deviations: the teacher is distilled from EfficientNet-Lite0 features of patches of the
training images (ImageNet and ResNet-18 weights are not available offline) instead of
ImageNet patches; the metric-learning (triplet) loss is not used (the paper's MVTec setting
uses knowledge distillation and compactness only); normalisation statistics come from the
training images rather than a separate validation set. The teacher's pretraining length,
``teacher_steps`` = 2000 steps of 64 crops, is this library's budget for CPU runs, not the
paper's (which pretrains on ImageNet patches). ``init`` reruns the (deterministic) teacher
pretraining when a run is resumed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from anomjax.methods.base import State, register
from anomjax.methods.hyper import hyper
from anomjax.methods.protocol import TrainedMethod
from anomjax.nn.teacher import check_taps, frozen_features, teacher, teacher_variables
from anomjax.scoring import gaussian_blur
from anomjax.types import Batch, Scores

# (kind, kernel, width multiplier of `width`); the last conv outputs the descriptor instead.
_ARCHITECTURES: dict[int, tuple[tuple[str, int, int], ...]] = {
    17: (("conv", 6, 1), ("conv", 5, 2), ("conv", 5, 2), ("conv", 4, 0)),
    33: (("conv", 5, 1), ("pool", 2, 0), ("conv", 5, 2), ("pool", 2, 0), ("conv", 2, 2),
         ("conv", 4, 0)),
    65: (("conv", 5, 1), ("pool", 2, 0), ("conv", 5, 1), ("pool", 2, 0), ("conv", 5, 1),
         ("pool", 2, 0), ("conv", 4, 2), ("conv", 1, 0)),
}
_TEACHER_LR = 2e-4
_WEIGHT_DECAY = 1e-5


def _teacher_optimizer() -> optax.GradientTransformation:
    """The paper's teacher optimiser: Adam, lr 2e-4, weight decay 1e-5."""
    return optax.chain(optax.add_decayed_weights(_WEIGHT_DECAY), optax.adam(_TEACHER_LR))


def patch_extent(patch_size: int) -> int:
    """Pixels one dense output depends on (one side): 17, 32 or 60."""
    extent, dilation = 1, 1
    for kind, k, _ in _ARCHITECTURES[patch_size]:
        extent += (k - 1) * dilation
        if kind == "pool":
            dilation *= 2
    return extent


def dilated_max_pool(x: jax.Array, window: int, dilation: int) -> jax.Array:
    """Stride-1 "VALID" max-pool of ``x [B, H, W, C]`` over a ``window x window`` grid of
    pixels ``dilation`` apart -> ``[B, H - (window-1)*dilation, W - ..., C]``.

    Written as a maximum of shifted views, because JAX has no gradient for a dilated
    ``reduce_window`` max (needed to train the 33 and 65 patch networks).
    """
    span = (window - 1) * dilation
    out_h, out_w = x.shape[1] - span, x.shape[2] - span
    out = None
    for a in range(window):
        for b in range(window):
            view = x[:, a * dilation:a * dilation + out_h, b * dilation:b * dilation + out_w]
            out = view if out is None else jnp.maximum(out, view)
    return out


class DensePatchNet(nn.Module):
    """Patch-descriptor network evaluated densely: ``[B, H, W, 3] -> [B, H', W', dim]``.

    ``H' = H - extent + 1``; a ``[B, extent, extent, 3]`` patch gives one descriptor. With
    ``patchwise`` the same parameters run as the paper's strided patch network (pools of
    stride 2, undilated convolutions): on a single ``extent``-sized patch it gives the same
    descriptor at a fraction of the cost, which is how the teacher is pretrained.
    """

    patch_size: int
    width: int = 128
    dim: int = 128
    patchwise: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        layers = _ARCHITECTURES[self.patch_size]
        dilation = 1
        for i, (kind, k, mult) in enumerate(layers):
            if kind == "pool":
                if self.patchwise:
                    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1),
                                              (1, k, k, 1), "VALID")
                else:
                    x = dilated_max_pool(x, k, dilation)
                    dilation *= k
                continue
            last = i == len(layers) - 1
            x = nn.Conv(self.dim if last else mult * self.width, (k, k),
                        kernel_dilation=(dilation, dilation), padding="VALID",
                        name=f"conv{i}")(x)
            if not last:
                x = nn.leaky_relu(x, 5e-3)
        return x


def dense_descriptors(net: DensePatchNet, params: Any, images: jax.Array) -> jax.Array:
    """Descriptors ``[B, H, W, dim]`` of the patch of side ``p`` centred on every pixel, as
    the paper defines them (reflect padding keeps the size). The network sees the first
    ``extent`` rows and columns of that patch (floor pooling drops the rest: 32 of 33, 60 of
    65), so the window starts ``(p - 1) / 2`` pixels before the pixel."""
    extent = patch_extent(net.patch_size)
    before = (net.patch_size - 1) // 2
    after = extent - 1 - before
    x = jnp.pad(images, ((0, 0), (before, after), (before, after), (0, 0)), mode="reflect")
    return net.apply({"params": params}, x)


def compactness_loss(desc: jax.Array) -> jax.Array:
    """Sum of absolute off-diagonal correlations of descriptors ``[N, D]`` (paper's L_c)."""
    centred = desc - jnp.mean(desc, axis=0)
    cov = centred.T @ centred / desc.shape[0]
    std = jnp.sqrt(jnp.maximum(jnp.diag(cov), 1e-12))
    corr = cov / (std[:, None] * std[None, :])
    return jnp.sum(jnp.abs(corr)) - jnp.sum(jnp.abs(jnp.diag(corr)))


class _DistillHead(nn.Module):
    """Teacher patch net plus the linear decoder used only during its pretraining."""

    patch_size: int
    width: int
    dim: int
    target_dim: int

    @nn.compact
    def __call__(self, patches: jax.Array) -> tuple[jax.Array, jax.Array]:
        desc = DensePatchNet(self.patch_size, self.width, self.dim, patchwise=True,
                             name="net")(patches)
        desc = desc.reshape(desc.shape[0], -1)
        return desc, nn.Dense(self.target_dim, name="decoder")(desc)


def _descriptor_stats(net: DensePatchNet, params: Any, batches: Iterable[np.ndarray],
                      chunk: int = 8) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and std ``[dim]`` of the dense descriptors of the images of
    ``batches`` (``[b, H, W, 3]`` each), ``chunk`` images at a time (float64 sums)."""
    @jax.jit
    def moments(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        desc = dense_descriptors(net, params, x)
        return jnp.sum(desc, axis=(0, 1, 2)), jnp.sum(jnp.square(desc), axis=(0, 1, 2))

    total, total_sq, count = 0.0, 0.0, 0
    for batch in batches:
        for start in range(0, batch.shape[0], chunk):
            part = jnp.asarray(batch[start:start + chunk], jnp.float32)
            s1, s2 = moments(params, part)
            total = total + np.asarray(s1, np.float64)
            total_sq = total_sq + np.asarray(s2, np.float64)
            count += int(np.prod(part.shape[:3]))
    mean, std = _mean_std(total, total_sq, count)
    return jnp.asarray(mean, jnp.float32), jnp.asarray(np.maximum(std, 1e-6), jnp.float32)


def image_batches(images: Any) -> Sequence[np.ndarray] | Iterable[np.ndarray]:
    """``images``: one ``[N, H, W, 3]`` array, or a re-iterable of such batches -> batches."""
    if hasattr(images, "shape"):
        return [np.asarray(images, np.float32)]
    return images


def _cycle(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The batches over and over (re-iterating ``batches``)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield np.asarray(batch, np.float32)
        if empty:
            raise ValueError("uninformed_students.init got no images")


def _mean_std(total: Any, total_sq: Any, count: int) -> tuple[Any, Any]:
    """Mean and (population) std from the float64 sums of values and of their squares."""
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))


@register
@dataclasses.dataclass(frozen=True)
class UninformedStudents(TrainedMethod):
    """Student-teacher anomaly detection with per-scale student ensembles.

    Attributes:
      patch_sizes: scales, a subset of ``(17, 33, 65)``.
      students: ensemble size ``M`` per scale (paper: 3).
      width: channels of the first layer (paper: 128; the others are 1x or 2x it).
      descriptor_dim: descriptor length (paper: 128).
      backbone, backbone_weights, distill_tap, distill_size: the pretrained network whose
        pooled ``distill_tap`` features of ``distill_size``-pixel patch resizes the teacher
        imitates.
      teacher_batch, teacher_steps: fresh crops per step, and Adam steps of teacher
        pretraining (paper: batch 64; the steps are this library's budget).
      compactness_weight: weight of the teacher's compactness loss (paper: 1).
      learning_rate, weight_decay: students' Adam (paper: 1e-4, 1e-5).
      sigma: Gaussian smoothing of the map (paper: none, 0).
      sigma_side: image side at which the smoothing sigma holds (the paper's 256 px); other sizes
        scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "uninformed_students"
    default_epochs: ClassVar[int] = 100  # the paper's (students)
    init_on_all_images: ClassVar[bool] = True  # the teachers learn from every training image

    patch_sizes: tuple[int, ...] = (17, 33, 65)
    students: int = 3
    width: int = 128
    descriptor_dim: int = 128
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    distill_tap: str = "stage7"
    distill_size: int = 64
    teacher_batch: int = hyper(64, low=2, high=4096)
    teacher_steps: int = hyper(2000, low=1, high=10**7)
    compactness_weight: float = 1.0
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    sigma: float = hyper(0.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

    def _net(self, p: int) -> DensePatchNet:
        return DensePatchNet(p, self.width, self.descriptor_dim)

    def _check(self) -> None:
        unknown = [p for p in self.patch_sizes if p not in _ARCHITECTURES]
        if unknown or not self.patch_sizes:
            raise ValueError(f"uninformed_students patch_sizes must be taken from "
                             f"{tuple(_ARCHITECTURES)}, got {self.patch_sizes}")
        if self.students < 1:
            raise ValueError(f"uninformed_students needs students >= 1, got {self.students}")

    # ---------------------------------------------------------------- teacher pretraining

    def _patch_targets(self, crops: jax.Array, variables: Any) -> jax.Array:
        """Pooled backbone features ``[N, C]`` of patches ``[N, e, e, 3]`` (resized)."""
        backbone = teacher(self.backbone)
        size = (self.distill_size, self.distill_size)

        def describe(chunk: jax.Array) -> jax.Array:
            x = jax.image.resize(chunk, (chunk.shape[0], *size, 3), method="bilinear")
            (f,) = frozen_features(backbone, variables, x, (self.distill_tap,))
            return jnp.mean(f, axis=(1, 2))

        n = crops.shape[0]
        chunk = min(n, 256)
        pad = (-n) % chunk
        crops = jnp.concatenate([crops, crops[:pad]]) if pad else crops
        out = jax.lax.map(describe, crops.reshape(-1, chunk, *crops.shape[1:]))
        return out.reshape(-1, out.shape[-1])[:n]

    def _teacher_step(self, p: int, target_dim: int) -> Any:
        """The jitted teacher step of scale ``p``:
        ``(params, opt_state, variables, images [b, H, W, 3], n_valid, key) ->
        (params, opt_state)``; crops come from the first ``n_valid`` images."""
        extent = patch_extent(p)
        head = _DistillHead(p, self.width, self.descriptor_dim, target_dim)

        def step(params: Any, opt_state: Any, variables: Any, images: jax.Array,
                 n_valid: jax.Array, key: jax.Array) -> tuple[Any, Any]:
            ki, ky, kx = jax.random.split(key, 3)
            n, (h, w) = self.teacher_batch, images.shape[1:3]
            idx = jax.random.randint(ki, (n,), 0, n_valid)
            ys = jax.random.randint(ky, (n,), 0, h - extent + 1)
            xs = jax.random.randint(kx, (n,), 0, w - extent + 1)
            crops = jax.vmap(lambda i, y, x: jax.lax.dynamic_slice(
                images[i], (y, x, 0), (extent, extent, 3)))(idx, ys, xs)
            targets = jax.lax.stop_gradient(self._patch_targets(crops, variables))

            def loss_fn(params: Any) -> jax.Array:
                desc, pred = head.apply({"params": params}, crops)
                kd = jnp.mean(jnp.sum((pred - targets) ** 2, axis=-1))
                return kd + self.compactness_weight * compactness_loss(desc)

            grads = jax.grad(loss_fn)(params)
            updates, opt_state = _teacher_optimizer().update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return head, jax.jit(step, donate_argnums=(0, 1))

    def _pretrain_teachers(self, key: jax.Array, batches: Iterable[np.ndarray],
                           variables: Any) -> dict[int, Any]:
        """Distil the backbone into every scale's teacher; ``{p: DensePatchNet params}``."""
        first = next(iter(batches), None)
        if first is None:
            raise ValueError("uninformed_students.init got no images")
        size, h, w = first.shape[:3]
        for p in self.patch_sizes:
            extent = patch_extent(p)
            if h < extent or w < extent:
                raise ValueError(f"uninformed_students: patch size {p} needs images of at "
                                 f"least {extent}x{extent} pixels, got {h}x{w}")
        target_dim = jax.eval_shape(self._patch_targets, jnp.zeros((1, 32, 32, 3)),
                                    variables).shape[-1]
        opt = _teacher_optimizer()
        runs, params, opt_states, step_keys = {}, {}, {}, {}
        for p, k in zip(self.patch_sizes, jax.random.split(key, len(self.patch_sizes)),
                        strict=True):
            k_init, step_keys[p] = jax.random.split(k)
            head, runs[p] = self._teacher_step(p, target_dim)
            extent = patch_extent(p)
            params[p] = head.init(k_init, jnp.zeros((1, extent, extent, 3)))["params"]
            opt_states[p] = opt.init(params[p])
        # A Python loop over jitted steps: XLA:CPU runs convolutions inside lax.scan ~8x
        # slower than the same step dispatched one by one.
        for i, batch in zip(tqdm(range(self.teacher_steps), desc="teachers", leave=False,
                                 disable=None), _cycle(batches), strict=False):
            n = batch.shape[0]
            if n > size or batch.shape[1:3] != (h, w):
                raise ValueError(f"uninformed_students.init: image batches must all be "
                                 f"[<= {size}, {h}, {w}, 3], got {list(batch.shape)}")
            if n < size:  # one compiled shape; the padding is never cropped
                batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]),
                                                        np.float32)])
            for p in self.patch_sizes:
                params[p], opt_states[p] = runs[p](params[p], opt_states[p], variables, batch,
                                                   jnp.int32(n),
                                                   jax.random.fold_in(step_keys[p], i))
        return {p: params[p]["net"] for p in self.patch_sizes}

    # ---------------------------------------------------------------- protocol

    def init(self, key: jax.Array, images: Any) -> State:
        """Pretrain one teacher per scale, store its descriptor statistics, init students.

        ``images``: ``[N, H, W, 3]`` float images, or a re-iterable of ``[b, H, W, 3]`` batches
        (what the engine passes for ``init_on_all_images``).
        """
        self._check()
        check_taps(self.name, self.backbone, (self.distill_tap,), field="distill_tap")
        batches = image_batches(images)
        variables = teacher_variables(self.backbone, self.backbone_weights)
        k_teachers, k_all_students = jax.random.split(key)
        trained = self._pretrain_teachers(k_teachers, batches, variables)
        params, teachers, t_mean, t_std = {}, {}, {}, {}
        for p, k_students in zip(self.patch_sizes,
                                 jax.random.split(k_all_students, len(self.patch_sizes)),
                                 strict=True):
            s = f"p{p}"
            teachers[s] = trained[p]
            t_mean[s], t_std[s] = _descriptor_stats(self._net(p), trained[p], batches)
            patch = jnp.zeros((1, patch_extent(p), patch_extent(p), 3), jnp.float32)
            params[s] = jax.jit(jax.vmap(lambda kk, p=p, patch=patch: self._net(p).init(
                kk, patch)["params"]))(jax.random.split(k_students, self.students))
        frozen = {"teacher": teachers, "teacher_mean": t_mean, "teacher_std": t_std}
        for stat, value in (("error_mean", 0.0), ("error_std", 1.0), ("variance_mean", 0.0),
                            ("variance_std", 1.0)):  # identity until `calibrate`
            frozen[stat] = {f"p{p}": jnp.full((), value, jnp.float32) for p in self.patch_sizes}
        return {"params": params, "frozen": frozen}

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam with L2 weight decay (paper: lr 1e-4, decay 1e-5), constant."""
        del total_steps
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.adam(self.learning_rate))

    def _predictions(self, params: Any, state: State, images: jax.Array,
                     p: int) -> tuple[jax.Array, jax.Array]:
        """Normalised teacher descriptors ``[B, H, W, D]`` and student means
        ``[M, B, H, W, D]`` at scale ``p``."""
        s = f"p{p}"
        frozen = jax.lax.stop_gradient(state["frozen"])
        net = self._net(p)
        target = dense_descriptors(net, frozen["teacher"][s], images)
        target = (target - frozen["teacher_mean"][s]) / frozen["teacher_std"][s]
        # One student after another: vmap over the parameters would batch the kernels into
        # a grouped convolution, which XLA:CPU runs several times slower.
        preds = jnp.stack([
            dense_descriptors(net, jax.tree.map(lambda a, i=i: a[i], params[s]), images)
            for i in range(self.students)])
        return target, preds

    def loss(self, params: Any, state: State, images: jax.Array,
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Sum over scales and students of the mean (over pixels and images) squared distance
        to the normalised teacher descriptors."""
        del key
        total, aux = 0.0, {}
        for p in self.patch_sizes:
            target, preds = self._predictions(params, state, images, p)
            per_student = jnp.mean(jnp.sum((preds - target) ** 2, axis=-1), axis=(1, 2, 3))
            aux[f"regression_p{p}"] = jnp.mean(per_student)
            total = total + jnp.sum(per_student)
        return total, aux

    def _raw_scores(self, state: State, images: jax.Array,
                    p: int) -> tuple[jax.Array, jax.Array]:
        """Regression error and predictive variance ``[B, H, W]`` at scale ``p``."""
        target, preds = self._predictions(state["params"], state, images, p)
        mean = jnp.mean(preds, axis=0)
        error = jnp.sum((mean - target) ** 2, axis=-1)
        variance = jnp.mean(jnp.sum(preds ** 2, axis=-1), axis=0) - jnp.sum(mean ** 2, axis=-1)
        return error, variance

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """Store the mean and std of the error and variance on the training images."""
        fn = jax.jit(lambda st, x: {f"p{p}": self._raw_scores(st, x, p)
                                    for p in self.patch_sizes})
        sums: dict[str, np.ndarray] = {}
        count = 0
        for batch in batches:
            out = fn(state, jnp.asarray(batch.images, jnp.float32))
            count += int(np.prod(batch.images.shape[:3]))
            for s, (err, var) in out.items():
                e, v = np.asarray(err, np.float64), np.asarray(var, np.float64)
                acc = np.array([e.sum(), (e ** 2).sum(), v.sum(), (v ** 2).sum()])
                sums[s] = sums.get(s, 0.0) + acc
        if count == 0:
            raise ValueError("uninformed_students.calibrate got no training images")
        frozen = dict(state["frozen"])
        for key in ("error_mean", "error_std", "variance_mean", "variance_std"):
            frozen[key] = dict(frozen[key])
        for s, (e1, e2, v1, v2) in sums.items():
            for name, m1, m2 in (("error", e1, e2), ("variance", v1, v2)):
                mean, std = _mean_std(m1, m2, count)
                frozen[f"{name}_mean"][s] = jnp.asarray(mean, jnp.float32)
                frozen[f"{name}_std"][s] = jnp.asarray(max(std, 1e-12), jnp.float32)
        return {**state, "frozen": frozen}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = mean over scales of normalised error + normalised variance; image score =
        its max."""
        frozen = state["frozen"]
        maps = []
        for p in self.patch_sizes:
            s = f"p{p}"
            error, variance = self._raw_scores(state, images.astype(jnp.float32), p)
            maps.append((error - frozen["error_mean"][s]) / frozen["error_std"][s]
                        + (variance - frozen["variance_mean"][s]) / frozen["variance_std"][s])
        maps = gaussian_blur(sum(maps) / len(maps), self.sigma, self.sigma_side)
        return Scores(image=jnp.max(maps, axis=(1, 2)), maps=maps)
