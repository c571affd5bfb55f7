"""CFLOW-AD (Gudovskiy, Ishizaka & Kozuka, "CFLOW-AD: Real-Time Unsupervised Anomaly
Detection with Localization via Conditional Normalizing Flows", WACV 2022).

Each feature level ``l`` of a frozen encoder gives ``B h_l w_l`` fibres (feature vectors of
one position, ``C_l`` channels). A conditional flow decoder per level maps a fibre, given the
2-D sinusoidal positional encoding of its position (128 channels), to ``z``; training
maximises ``log p = C * log N(0) - 0.5 ||z||^2 + log|det J|`` through the authors' loss
``-log sigmoid(log p / C)``, summed over levels. At test time the per-position
``log p / C`` of each level is normalised to ``(-inf, 0]`` by subtracting a constant,
exponentiated, upsampled bilinearly to the input and summed over levels; the map is minus
the sum (higher = more anomalous) and the image score its maximum.

The authors normalise by the maximum of each level's ``log p / C`` over the whole test set
(in float64) and report ``max - sum``; the outer maximum shifts every map by one constant
and changes no ranking, but the per-level constants do: levels are summed, so another
constant per level re-weights them. ``normalizer="test"`` is the authors' (a transductive
statistic: :meth:`calibrate_test`, which the evaluation runs on the split before scoring
it); ``normalizer="train"`` (default) takes the maximum over the training images
(:meth:`calibrate`) and positions above it count as probability 1, so a saved model scores
any batch or single image alone (deployment). A state that was never calibrated is an
error, not a flat map. The map here is ``-sum`` (the authors' minus their test-set constant,
which in float32 would round probabilities below ``1e-7 L`` away).

Authors' defaults kept: encoder levels of strides 8/16/32 (WRN50 ``layer2..layer4``); 8
FrEIA ``AllInOneBlock`` couplings per decoder with the condition concatenated to the
subnet's input, subnet ``Linear(d, 2d) -> ReLU -> Linear(2d, 2 (C//2))`` (``d`` = kept
half + condition), clamp 1.9 (log-scales ``1.9 tanh(0.1 s)``), global affine with softplus
scale, soft permutations (fixed random rotations); Adam lr 2e-4 with 2 warm-up meta-epochs
from lr/10 and cosine decay to lr * 1e-3 (``lr_schedule="cosine"``; schedule spread over
this run's steps, 25 of the authors' 8-epoch meta-epochs = 200 epochs by default).

Training follows the authors' ``train_meta_epoch``: each level's fibres of an image batch
are shuffled and cut into ``B h w // fibre_batch`` mini-batches of ``fibre_batch`` (256),
each one Adam update of that level's decoder (the remainder is dropped, as theirs is), all
inside the one jitted step (:meth:`train_update`, a ``lax.scan`` per level). Every decoder
has its own Adam state, as the authors' single optimiser gives them (``zero_grad`` leaves the
other levels' gradients ``None``, so their moments and step counts do not move), and the
learning rate is the schedule's value of the image batch (theirs is set per iteration).
``fibre_batch=0`` is one update per image batch over every fibre (the earlier behaviour,
about ``B h w / 256`` times fewer updates). ``rotation_degrees=5`` is the authors' training
augmentation (``RandomRotation(5)``, nearest, zeros outside); it rotates the image before
the encoder, so the engine's frozen-feature cache is off (:attr:`uses_frozen_features`).
Default 0: the paper does not list the augmentation, and without it the encoder runs once
per training image.

Deviations: WRN50 ``layer2..layer4`` become EfficientNet-Lite0 ``stage3, stage5, stage7``
(strides 8/16/32, channels 40/112/320; anomalib's mapping in the reference script);
``backbone="wide_resnet50_2", taps=("layer2", "layer3", "layer4")`` with the user's weights
is the paper's setting. The authors upsample with ``align_corners=True`` (the option of
that name); the default is half-pixel centres (the library's shared
upsampling). Parity with the authors' code: ``tests/parity/test_parity_cflow.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple

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
    rotate,
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
from anomjax.precision import full_precision
from anomjax.scoring import to_scores, upsample
from anomjax.types import Batch, Scores


class LevelAdam(NamedTuple):
    """An optax ``GradientTransformation`` with one ``torch.optim.Adam`` state per decoder.

    State ``{"step": [] int32 image batches seen, "levels": {level: ScaleByAdamState}}``.
    ``update`` steps every level once (one update per image batch, used for
    ``fibre_batch=0`` and the engine's schedule check); :meth:`CFlow.train_update` steps one
    level per fibre mini-batch with :func:`level_update`. The learning rate of image batch
    ``s`` is ``learning_rate(s)``.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    learning_rate: Callable[[jax.Array], jax.Array]


_ADAM = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)  # torch.optim.Adam's defaults


def level_update(grads: Any, adam_state: Any, params: Any, lr: jax.Array) -> tuple[Any, Any]:
    """One Adam update of one decoder: ``(new params, new Adam state)``."""
    updates, adam_state = _ADAM.update(grads, adam_state)
    return jax.tree.map(lambda p, u: p - lr * u, params, updates), adam_state


def level_adam(learning_rate: float | Callable[[jax.Array], jax.Array]) -> LevelAdam:
    """:class:`LevelAdam` with a constant ``learning_rate`` or a schedule over image batches."""
    schedule = learning_rate if callable(learning_rate) else (
        lambda step: jnp.asarray(learning_rate, jnp.float32))

    def init(params: dict[str, Any]) -> dict[str, Any]:
        return {"step": jnp.zeros((), jnp.int32),
                "levels": {k: _ADAM.init(v) for k, v in params.items()}}

    def update(grads: dict[str, Any], state: dict[str, Any],
               params: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if params is None:
            raise ValueError("LevelAdam.update needs the params")
        lr = schedule(state["step"])
        updates, levels = {}, {}
        for k, g in grads.items():
            new, levels[k] = level_update(g, state["levels"][k], params[k], lr)
            updates[k] = jax.tree.map(jnp.subtract, new, params[k])
        return updates, {"step": state["step"] + 1, "levels": levels}

    return LevelAdam(init, update, schedule)


def resize_align_corners(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``maps [B, h, w]`` to ``[B, *size]`` with ``align_corners=True``
    (PyTorch's ``F.interpolate(..., mode="bilinear", align_corners=True)``)."""

    def matrix(n_out: int, n_in: int) -> np.ndarray:
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        low = np.minimum(np.floor(pos).astype(int), n_in - 1)
        high, frac = np.minimum(low + 1, n_in - 1), pos - np.floor(pos)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), low), 1 - frac)
        np.add.at(m, (np.arange(n_out), high), frac)
        return m.astype(np.float32)

    rows, cols = matrix(size[0], maps.shape[1]), matrix(size[1], maps.shape[2])
    return jnp.einsum("yh,bhw,xw->byx", rows, maps.astype(jnp.float32), cols,
                      precision=jax.lax.Precision.HIGHEST)


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
      fibre_batch: fibres per Adam update (authors' ``N``: 256); 0: one update per image
        batch over every fibre.
      rotation_degrees: training images rotated by a uniform angle in ``[-d, d]`` (authors:
        5; default 0 keeps the frozen-feature cache).
      normalizer: ``"train"`` (training-set maximum per level, default) or ``"test"``
        (authors: the maximum over the scored split).
      align_corners: upsample the levels with ``align_corners=True`` (authors).
      learning_rate: Adam (authors: 2e-4); ``lr_schedule``: ``"cosine"`` (authors) or
        ``"constant"`` (anomalib).
      sigma: Gaussian smoothing of the map in input pixels (authors: none).
      sigma_side: image side at which the smoothing sigma holds (the authors' 256 px); other sizes
        scale it with their shorter side (0: pixels at every size).
    """

    name: ClassVar[str] = "cflow"
    default_epochs: ClassVar[int] = 200  # 25 meta-epochs of 8 epochs (authors' config)
    default_batch_size: ClassVar[int] = 32  # authors' config.py

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    taps: tuple[str, ...] = ("stage3", "stage5", "stage7")
    condition_dim: int = hyper(128, low=4, high=1024)
    coupling_blocks: int = hyper(8, low=1, high=64)
    clamp: float = hyper(1.9, low=0.0, high=20.0, low_open=True)
    fibre_batch: int = hyper(256, low=0)
    rotation_degrees: float = hyper(0.0, low=0.0, high=180.0)
    normalizer: str = hyper("train", choices=("train", "test"))
    align_corners: bool = False
    learning_rate: float = hyper(2e-4, low=0.0, high=1.0, low_open=True)
    lr_schedule: str = hyper("cosine", choices=("cosine", "constant"))
    sigma: float = hyper(0.0, low=0.0, high=64.0)
    sigma_side: int = hyper(256, low=0)

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
        """Frozen encoder and one decoder per level (no normaliser until :meth:`calibrate`
        or :meth:`calibrate_test`)."""
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
        return {"params": params, "frozen": frozen}

    def optimizer(self, total_steps: int) -> LevelAdam:
        """Adam per decoder (:class:`LevelAdam`); the authors' warm-up + cosine schedule over
        ``total_steps`` image batches (or constant)."""
        lr: Any = self.learning_rate
        if self.lr_schedule == "cosine":
            lr = cosine_with_warmup(self.learning_rate, total_steps, warmup_share=2 / 25)
        return level_adam(lr)

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
        """``log p / C`` per position ``[B, h_l, w_l]`` per level (one encoder pass; the
        decoders at full precision: they decide the scores)."""
        out = []
        for level, f in enumerate(self.frozen_features(state, images)):
            with full_precision():
                out.append(self._log_prob(params, level, *self._fibres(f)).reshape(f.shape[:3]))
        return out

    @property
    def uses_frozen_features(self) -> bool:
        """``False`` with ``rotation_degrees``: the encoder then sees randomly rotated
        images, so its features are no function of the image alone and cannot be cached."""
        return self.rotation_degrees == 0

    def frozen_features(self, state: State, images: jax.Array) -> list[jax.Array]:
        """The frozen encoder's features ``[B, h, w, c]`` per tap (a function of the image
        alone, so the training engine computes them once per training image:
        ``anomjax.train.frozen_cache``)."""
        return encoder_features(self.backbone, state, images, self.taps)

    def _training_features(self, state: State, images: jax.Array, key: jax.Array,
                           frozen: list[jax.Array] | None) -> list[jax.Array]:
        """The encoder's features of the training batch: the cached ``frozen`` ones, or of
        the images rotated by uniform angles in ``[-rotation_degrees, rotation_degrees]``."""
        if self.rotation_degrees:
            if frozen is not None:
                raise ValueError("cflow: rotation_degrees > 0 rotates every training image "
                                 "anew, so cached frozen features cannot be used")
            angles = jax.random.uniform(key, (images.shape[0],), minval=-self.rotation_degrees,
                                        maxval=self.rotation_degrees)
            images = rotate(images, angles, "nearest")
        return self.frozen_features(state, images) if frozen is None else frozen

    def loss(self, params: Any, state: State, images: jax.Array, key: jax.Array,
             frozen: list[jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Sum over levels of the mean ``-log sigmoid(log p / C)`` over every fibre of the
        batch (the objective; training runs it per fibre mini-batch: :meth:`train_update`);
        ``frozen``: the encoder's features when the engine cached them."""
        total, aux = jnp.zeros((), jnp.float32), {}
        feats = self._training_features(state, images, jax.random.fold_in(key, 1), frozen)
        for level, f in enumerate(feats):
            nll = jnp.mean(-jax.nn.log_sigmoid(self._log_prob(params, level, *self._fibres(f))))
            aux[f"loss_level{level}"] = nll
            total = total + nll
        return total, aux

    def fibre_updates(self, params: dict[str, Any], adam_state: Any, level: int,
                      fibres: jax.Array, context: jax.Array, order: jax.Array,
                      lr: jax.Array) -> tuple[Any, Any, jax.Array, jax.Array]:
        """The authors' fibre loop of one level: ``fibres [E, C]`` and ``context [E, P]``
        taken in ``order [E]`` (a permutation), ``E // n`` mini-batches of ``n =
        fibre_batch`` (all ``E`` when 0), one Adam update of decoder ``level`` (its
        ``params`` and ``adam_state``) each, in a ``lax.scan``.

        Returns ``(params, adam_state, losses [K], grad_norms [K])``.
        """
        n = self.fibre_batch or fibres.shape[0]
        count = fibres.shape[0] // n
        if count == 0:
            raise ValueError(f"cflow: level {level} has {fibres.shape[0]} fibres per image "
                             f"batch, fewer than fibre_batch={n}: lower fibre_batch or raise "
                             "the batch size (the authors' code asserts the same)")
        chunks = order[:count * n].reshape(count, n)

        def step(carry: tuple[Any, Any], idx: jax.Array) -> tuple[tuple[Any, Any], Any]:
            p, s = carry

            def loss_fn(p: Any) -> jax.Array:
                log_p = self._log_prob({f"level{level}": p}, level, fibres[idx], context[idx])
                return jnp.mean(-jax.nn.log_sigmoid(log_p))

            loss, grads = jax.value_and_grad(loss_fn)(p)
            p, s = level_update(grads, s, p, lr)
            return (p, s), (loss, optax.tree.norm(grads))

        (params, adam_state), (losses, norms) = jax.lax.scan(step, (params, adam_state),
                                                             chunks)
        return params, adam_state, losses, norms

    def train_update(self, optimizer: Any, opt_state: Any, state: State, images: jax.Array,
                     key: jax.Array, frozen: list[jax.Array] | None = None
                     ) -> tuple[Any, Any, jax.Array, dict[str, jax.Array]]:
        """One image batch of the authors' training: per level, the fibres shuffled and
        :meth:`fibre_updates` (one Adam update per ``fibre_batch`` of them). Loss: the sum
        over levels of the mean mini-batch loss; ``grad_norm``: the root mean square of the
        mini-batches' gradient norms over levels."""
        if not isinstance(optimizer, LevelAdam):
            raise ValueError("cflow trains with its own per-level Adam (CFlow.optimizer); "
                             "gradient accumulation and wrapped optimisers are not supported")
        rotation_key, *keys = jax.random.split(key, len(self.taps) + 1)
        feats = self._training_features(state, images, rotation_key, frozen)
        lr = optimizer.learning_rate(opt_state["step"])
        params, levels = dict(state["params"]), dict(opt_state["levels"])
        total, squares, aux = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), {}
        for level, f in enumerate(feats):
            fibres, context = self._fibres(f)
            order = (jax.random.permutation(keys[level], fibres.shape[0]) if self.fibre_batch
                     else jnp.arange(fibres.shape[0]))
            name = f"level{level}"
            params[name], levels[name], losses, norms = self.fibre_updates(
                params[name], levels[name], level, fibres, context, order, lr)
            aux[f"loss_{name}"] = jnp.mean(losses)
            aux[f"updates_{name}"] = jnp.asarray(losses.shape[0], jnp.float32)
            total = total + aux[f"loss_{name}"]
            squares = squares + jnp.mean(jnp.square(norms))
        aux["grad_norm"] = jnp.sqrt(squares)
        return params, {"step": opt_state["step"] + 1, "levels": levels}, total, aux

    def _level_maxima(self, state: State, batches: Iterable[Batch]) -> jax.Array:
        """``[L]``: the maximum of each level's ``log p / C`` over the images of ``batches``."""
        maxima = jax.jit(lambda st, x: jnp.stack(
            [jnp.max(m) for m in self._log_prob_maps(st["params"], st, x)]))
        best = np.full(len(self.taps), -np.inf)
        for batch in batches:
            best = np.maximum(best, np.asarray(maxima(state, jnp.asarray(batch.images,
                                                                         jnp.float32))))
        if not np.all(np.isfinite(best)):
            raise ValueError("cflow: no images to calibrate the normaliser on")
        return jnp.asarray(best, jnp.float32)

    def calibrate(self, state: State, batches: Iterable[Batch]) -> State:
        """``normalizer="train"``: ``reference``, the maximum of each level's ``log p / C``
        over the training images. ``"test"``: no normaliser yet (:meth:`calibrate_test`)."""
        state = {k: v for k, v in state.items() if k != "reference"}
        if self.normalizer != "train":
            return state
        return {**state, "reference": self._level_maxima(state, batches)}

    def calibrate_test(self, state: State, batches: Iterable[Batch]) -> State:
        """``normalizer="test"`` (authors): ``reference``, the maximum of each level's
        ``log p / C`` over the split about to be scored; ``"train"``: unchanged."""
        if self.normalizer != "test":
            return state
        return {**state, "reference": self._level_maxima(state, batches)}

    def score(self, state: State, images: jax.Array) -> Scores:
        """Map = ``-sum_l upsample(exp(min(log p_l / C - reference_l, 0)))``; image = its
        max. Raises when the state has no normaliser (never calibrated)."""
        check_rgb(self.name, images)
        if "reference" not in state:
            where = ("calibrate(state, training batches)" if self.normalizer == "train" else
                     "calibrate_test(state, the batches of the split to score)")
            raise ValueError(f"cflow: the state has no normaliser (normalizer="
                             f"{self.normalizer!r}): call {where} first (anomjax.train and "
                             "anomjax.evaluate do)")
        size = images.shape[1:3]
        resize = resize_align_corners if self.align_corners else upsample
        total = jnp.zeros((images.shape[0], *size), jnp.float32)
        for level, log_p in enumerate(self._log_prob_maps(state["params"], state, images)):
            prob = jnp.exp(jnp.minimum(log_p - state["reference"][level], 0.0))
            total = total + resize(prob, size)
        return to_scores(-total, size, self.sigma, sigma_side=self.sigma_side)
