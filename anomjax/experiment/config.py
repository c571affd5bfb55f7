"""Configs as code: ``get_config(arg)`` modules, command-line overrides, and the method they build.

A config is an ``ml_collections.ConfigDict`` with at least these fields::

    method      ConfigDict: ``name`` (a registered method) + every hyper-parameter of it
    data        a tuple of category folders (set from one folder or several:
                ``--config.data=DIR`` or ``--config.data=(DIR1,DIR2)``); several is the
                multi-class setting, one model trained on the union of their images
    test_data   the folders to test on (default ``()``: each folder of ``data``)
    layout      dataset layout (``None``: detected)
    image_size  images are resized to N x N ...
    crop        ... then centre-cropped to M x M (``None``: no crop)
    resize_dtype  ``"uint8"`` resizes the 8-bit images, ``"float32"`` their [0, 1] floats
                (see :mod:`anomjax.data.transforms`)
    epochs      training epochs (``None``: the method's default; ignored by fit methods)
    steps       training budget in optimiser steps (``None``: use ``epochs``; when set,
                ``epochs`` is ignored)
    engine      ConfigDict of the training engine's settings
                (:class:`anomjax.train.EngineSettings`: ``compute_dtype``, ``log_every``,
                ``checkpoint_every``, ``keep``, ``frozen_cache_mb``, ``accumulate``,
                ``profile_steps``)
    batch_size  global batch size (``None``: the method's default, else 16)
    seed        PRNG seed of fitting/training
    seeds       K: train K independent models in one vmapped step
                (:class:`anomjax.methods.population.Population`); each member is saved
                and tested as its own run (``members/<i>/``), one metrics record each
    learning_rates  a tuple of K learning rates: K models, one per rate, trained in one
                vmapped step (``Population(learning_rates=...)``; ``seeds`` must be 1 or K);
                each member's records carry its ``learning_rate``
    shard_members   split the K members over the devices (K a multiple of their count)
    save_maps   write ``maps.npz`` of the test split into the run folder (for curves)
    sweep       ConfigDict ``field -> tuple of values``: their Cartesian product is swept
    sweep_zip   ConfigDict ``field -> tuple of values`` (equal lengths): swept together

A config file is a Python module defining ``get_config(arg=None)``; it is named on the
command line as ``path.py`` or ``path.py:arg``. Overrides ``--config.a.b=v`` (or
``a.b=v`` in Python) parse ``v`` as the type of the field they replace.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from anomjax.methods.base import method_class
from anomjax.methods.hyper import parse_value
from anomjax.train.settings import EngineSettings


def base_config(method: str, arg: str | None = None, **fields: Any) -> ml_collections.ConfigDict:
    """The default config of ``method``: its dataclass defaults (the papers'), the shared
    run fields of the module docstring (image size, epochs and batch size from the class's
    ``default_image_size``/``default_epochs``/``default_batch_size`` where it declares
    them), then ``fields``, then ``arg``.

    ``arg`` is the ``:ARG`` of a config file name: comma-separated ``FIELD=VALUE``
    overrides, e.g. ``"image_size=64,epochs=1"`` (tuple values go in ``--config.`` flags).
    """
    cls = method_class(method)
    params = {f.name: f.default for f in dataclasses.fields(cls)
              if f.default is not dataclasses.MISSING}
    config = ml_collections.ConfigDict({
        "method": {"name": method, **params},
        "data": (), "test_data": (), "layout": None,
        "image_size": cls.default_image_size, "crop": None,
        "resize_dtype": "uint8",
        "epochs": getattr(cls, "default_epochs", None),  # fitted methods have none
        "steps": None,
        "engine": _engine_defaults(),
        "batch_size": cls.default_batch_size, "seed": 0, "seeds": 1,
        "learning_rates": (), "shard_members": False, "save_maps": True,
        "sweep": {}, "sweep_zip": {},
    })
    for key, value in fields.items():
        set_path(config, key, value)
    if arg:
        apply_overrides(config, arg.split(","))
    return config


def _engine_defaults() -> dict[str, Any]:
    """The engine's default settings as config fields (placeholders keep ``None`` fields
    typed, so ``--config.engine.compute_dtype=bfloat16`` parses)."""
    defaults = dataclasses.asdict(EngineSettings())
    defaults["compute_dtype"] = ml_collections.config_dict.placeholder(str)
    defaults["checkpoint_every"] = ml_collections.config_dict.placeholder(int)
    defaults["profile_steps"] = ml_collections.config_dict.placeholder(tuple)
    return defaults


def engine_settings(config: ml_collections.ConfigDict) -> EngineSettings:
    """The config's ``engine`` fields as :class:`EngineSettings` (checked)."""
    fields = config.get("engine", ml_collections.ConfigDict()).to_dict()
    if fields.get("profile_steps") is not None:
        fields["profile_steps"] = tuple(fields["profile_steps"])
    try:
        return EngineSettings(**fields)
    except TypeError as err:
        raise ValueError(f"config.engine: {err}") from None


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Run ``get_config(arg)`` of the config file named by ``spec`` (``path.py[:arg]``).

    The file is Python and runs when loaded: load only config files you trust. Any error
    while it runs (a failing import, an exception in ``get_config``) is a ``ValueError``
    naming the file and the error.
    """
    path_text, _, arg = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"--config {spec}: no config file {path}")
    module_spec = importlib.util.spec_from_file_location(f"anomjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ValueError(f"{path}: not a valid Python config file ({err})") from None
    except Exception as err:  # noqa: BLE001  (whatever the file raises: one line)
        raise ValueError(f"{path}: loading the config file failed: "
                         f"{type(err).__name__}: {err}") from None
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file must define get_config(arg=None)")
    try:
        config = module.get_config(arg or None)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: get_config({arg or None!r}) failed: "
                         f"{type(err).__name__}: {err}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"{path}: get_config returned {type(config).__name__}, "
                         "not an ml_collections.ConfigDict")
    return config


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested dict (tuples as lists, as JSON holds them)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def changed_fields(old: dict[str, Any], new: dict[str, Any], where: str = "folder"
                   ) -> list[str]:
    """``"field=old (folder) vs new (now)"`` for every flat field that differs."""
    return [f"{k}={old.get(k)!r} ({where}) vs {new.get(k)!r} (now)"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def get_path(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """The value at ``a.b.c``; a clear error names a missing field."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"the config has no field {dotted!r}")
        node = node[part]
    return node


def set_path(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` (the field must exist: a typo is an error, not a new field)."""
    *parents, leaf = dotted.split(".")
    node = get_path(config, ".".join(parents)) if parents else config
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ValueError(f"the config has no field {dotted!r}")
    if not parents and leaf in FOLDER_FIELDS:
        value = data_folders(value)  # one folder or several, always stored as a tuple
    with node.unlocked():
        node[leaf] = tuple(value) if isinstance(value, list) else value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Apply ``a.b=v`` strings, each parsed as the type of the field it replaces."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config override {item!r}: expected FIELD=VALUE")
        key = key.removeprefix("config.")
        try:
            set_path(config, key, parse_value(text, get_path(config, key)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"config override {item!r}: {err}") from None


def build_method(config: ml_collections.ConfigDict) -> Any:
    """The method the config describes (its hyper-parameters checked on construction)."""
    params = config.method.to_dict()
    name = params.pop("name")
    cls = method_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"config.method: {name} has no hyper-parameters {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


#: Fields that hold category folders: a tuple, set from one folder or several.
FOLDER_FIELDS = ("data", "test_data")


def data_folders(value: Any) -> tuple[str, ...]:
    """``config.data`` / ``config.test_data`` as a tuple of folders."""
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(str(v) for v in value)
