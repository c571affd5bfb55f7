"""Weight mapping of the parity tests of the Bergmann-network methods (``ae``, ``memae``,
``vae``, ``favae``): the reference ``experiments/parity/bergmann_torch.py`` names its modules
as ours (``encoder.conv0`` <-> ``("encoder", "conv0")``).

PyTorch's ``ConvTranspose2d`` weight ``[C_in, C_out, k, k]`` is the spatially flipped kernel
of ``lax.conv_transpose`` (which ``anomjax.nn.conv_ae.ConvDecoder`` computes); it is turned
into the ``[C_out, C_in, k, k]`` layout of a convolution so that the harness's checked
mapping (conv ``OIHW -> HWIO``) gives ``[k, k, C_in, C_out]``. Gradients and Adam steps map
the same way (the map is a permutation of the entries).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from parity_harness import GRADIENT_TOL, Fixture, parameter_tree

from anomjax.backbones.convert import TORCH_LEAF_NAMES, torch_to_flax
from anomjax.train import init_train_state, make_train_step


def dotted(path: tuple[str, ...]) -> str:
    """Flax module path -> PyTorch module name."""
    return ".".join(path)


def flax_layout(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reference tensors with every decoder (transposed) convolution weight flipped and its
    channel axes swapped (see the module docstring)."""
    out = {}
    for name, value in tensors.items():
        if name.startswith("decoder.") and name.endswith(".weight") and value.ndim == 4:
            value = np.ascontiguousarray(value.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        out[name] = value
    return out


def conv_ae_params(fixture: Fixture, template: Mapping[str, Any], group: str = "weights",
                   extra: Mapping[tuple[str, ...], str] | None = None,
                   prefix: str = "") -> dict[str, Any]:
    """Our ``params`` tree (shaped like ``template``) filled from the reference tensors of
    ``group`` (names under ``prefix``) by the harness's checked mapping.

    ``extra`` maps the paths of our parameters that the harness's leaf names do not cover
    (``("memory", "memory")``, ``("log_scale",)``) to their reference tensor names; each is
    checked for its shape here, every other tensor by :func:`torch_to_flax`.
    """
    extra = dict(extra or {})
    tensors = flax_layout(fixture.group(group, prefix))
    rest = jax.tree.map(lambda x: x, dict(template))
    taken = {}
    for path, name in extra.items():
        node = rest
        for key in path[:-1]:
            node[key] = dict(node[key])
            node = node[key]
        leaf = node.pop(path[-1])
        value = np.asarray(tensors.pop(name), np.float32)
        if value.shape != tuple(leaf.shape):
            raise AssertionError(f"{name}: shape {value.shape} != our {path} {leaf.shape}")
        taken[path] = value
    params = torch_to_flax({"params": rest}, tensors, dotted,
                           f"{fixture.path.name}:{group}/{prefix}")["params"]
    for path, value in taken.items():
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return params


def check_training_step(fixture: Fixture, method: Any, params: Any, images: jax.Array,
                        template: Mapping[str, Any],
                        extra: Mapping[tuple[str, ...], str] | None = None,
                        loss: Any = None) -> None:
    """Compare the gradient of the loss, the update of ``method.optimizer`` and the parameters
    after one step of our jitted train step (``anomjax.train.make_train_step``) with the
    reference's ``grads``, ``outputs/update/`` and ``stepped`` tensors (``GRADIENT_TOL``).

    ``loss(params) -> scalar`` replaces ``method.loss`` for the gradient and the update when
    the loss draws random numbers that the fixture fixes (the train step is then skipped).
    """
    key = jax.random.key(1)
    state = {"params": params}
    grads = jax.grad(loss or (lambda p: method.loss(p, state, images, key)[0]))(params)
    ref_grads = conv_ae_params(fixture, template, "grads", extra)
    fixture.close("gradients", grads, ref_grads, GRADIENT_TOL)
    optimizer = method.optimizer(1)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # Adam's first update g / (|g| + 1e-8) turns from linear to +-1 within |g| ~ 1e-8, where
    # the float32 rounding of a gradient moves it by percents: compared where the reference's
    # |g| >= 1e-6 (all of it is bounded by the step below)
    mask = jax.tree.map(lambda g: np.abs(g) >= 1e-6, ref_grads)
    ref_updates = conv_ae_params(fixture, template, "outputs", extra, "update/")
    fixture.close("optimiser update (|g| >= 1e-6)", jax.tree.map(np.multiply, updates, mask),
                  jax.tree.map(np.multiply, ref_updates, mask), GRADIENT_TOL)
    if loss is None:
        train_state = init_train_state(jax.tree.map(jnp.array, state), optimizer, key)
        new, _ = make_train_step(method, optimizer)(train_state, images, key)
        fixture.close("parameters after one train step", new.params,
                      conv_ae_params(fixture, template, "stepped", extra), GRADIENT_TOL)


def load_case(method: Any, extra: Mapping[tuple[str, ...], str] | None = None,
              ) -> tuple[Fixture, jax.Array, dict[str, Any], dict[str, Any]]:
    """``(fixture, images, params template, {"params": reference weights})`` of the fixture
    named like ``method``, whose network ``method.init`` builds."""
    fixture = Fixture(method.name)
    images = jnp.asarray(fixture.input("images"))
    template = method.init(jax.random.key(0), images)["params"]
    return fixture, images, template, {"params": conv_ae_params(fixture, template,
                                                                extra=extra)}


def check_maps(fixture: Fixture, method: Any, state: Any, images: jax.Array,
               variant: str = "") -> None:
    """``method.score``'s raw map (``sigma=0``), its smoothed map (the method's ``sigma``) and
    image score against the reference's ``map{_variant}``, ``map{_variant}_smoothed``,
    ``score{_variant}``."""
    suffix, label = (f"_{variant}", f" ({variant})") if variant else ("", "")
    raw = dataclasses.replace(method, sigma=0.0).score(state, images)
    fixture.close(f"map{label}", raw.maps, fixture.output(f"map{suffix}"))
    scores = method.score(state, images)
    fixture.close(f"smoothed map{label}", scores.maps, fixture.output(f"map{suffix}_smoothed"))
    fixture.close(f"image score{label}", scores.image, fixture.output(f"score{suffix}"))


def check_parameter_tree(name: str, template: Mapping[str, Any],
                         extra: Mapping[tuple[str, ...], str] | None = None) -> None:
    """Our full-width ``params`` (``template``) have the reference's ``<name>_tree.json``
    names, shapes (in the reference's layout: convolutions ``[O, I, k, k]``, the decoder's
    transposed ones ``[I, O, k, k]``) and parameter count."""
    extra = dict(extra or {})
    shapes, count = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(template))[0]:
        names = tuple(p.key for p in path)
        shape = tuple(leaf.shape)
        if names in extra:
            key = extra[names]
        else:
            key = f"{dotted(names[:-1])}.{TORCH_LEAF_NAMES[names[-1]]}"
        if len(shape) == 4:
            k1, k2, c_in, c_out = shape
            shape = (c_in, c_out, k1, k2) if names[0] == "decoder" else (c_out, c_in, k1, k2)
        shapes[key] = list(shape)
        count += int(np.prod(leaf.shape))
    tree = parameter_tree(name)
    assert shapes == tree["shapes"], sorted(set(shapes.items()) ^ set(tree["shapes"].items()))
    assert count == tree["parameter_count"]
