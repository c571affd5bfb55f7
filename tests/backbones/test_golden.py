"""The Flax ports reproduce the PyTorch reference networks (golden fixtures made with torch).

Fixtures (experiments/make_backbone_fixtures.py): logits and every tap of two 64x48 photos,
from efficientnet-lite-pytorch with the released Lite0/1/2 weights, and with seeded random
weights for Lite3/4 and the torchvision ResNets/WRNs (the test regenerates the same weights
with NumPy). A tap is compared on its first channels in full and on all channels' means.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from anomjax.backbones import (
    backbone_names,
    get_backbone,
    load_backbone,
    torch_state_dict_shapes,
    variables_from_state_dict,
)
from anomjax.backbones.seeded_weights import seeded_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "backbones"
TOLERANCE = 1e-4  # max |ours - torch| relative to max(1, max |torch|)
FAST = ("efficientnet_lite0", "resnet18")


def _params(names):
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in names]


def _load(name, tmp_path, monkeypatch, seed):
    """Released weights when the fixture has none seeded, else the seeded weights.

    ResNet-18's go through a .safetensors file in $ANOMJAX_WEIGHTS (the user's path); the
    big networks' are converted in memory to keep the test fast.
    """
    if seed < 0:
        return load_backbone(name)
    state = seeded_state_dict(torch_state_dict_shapes(name), seed)
    if name not in FAST:
        return get_backbone(name), variables_from_state_dict(name, state, f"seeded {name}")
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    save_file(state, str(weights_dir / f"{name}.safetensors"))
    monkeypatch.setenv("ANOMJAX_WEIGHTS", str(weights_dir))
    return load_backbone(name, use_cache=False)


def _relative_error(ours, ref):
    return float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))


@pytest.mark.parametrize("name", _params(backbone_names()))
def test_port_matches_pytorch_reference(name, tmp_path, monkeypatch):
    ref = np.load(FIXTURES / f"{name}.npz")
    images = np.load(FIXTURES / "inputs.npz")["images"]
    backbone, variables = _load(name, tmp_path, monkeypatch, int(ref["seed"]))
    taps = tuple(backbone.taps)
    head = "head" in taps  # Lite: checked through the classifier below, not stored in ref
    stored = tuple(t for t in taps if t != "head")
    assert sorted(f"tap_{t}" for t in stored) == sorted(k for k in ref.files
                                                       if k.startswith("tap_"))
    run = jax.jit(backbone.module.apply, static_argnames=("taps", "logits"))
    out = jax.device_get(run(variables, images, taps=taps, logits=True))
    if head:  # the classifier is fc(mean(head)): the head tap reproduces the reference logits
        fc = variables["params"]["fc"]
        pooled = np.asarray(out["head"], np.float64).mean(axis=(1, 2))
        from_head = pooled @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"])
        assert _relative_error(from_head, ref["logits"]) < TOLERANCE
    for tap in stored:
        info = backbone.taps[tap]
        assert out[tap].shape == (2, -(-64 // info.stride), -(-48 // info.stride), info.channels)
        kept = ref[f"tap_{tap}"]
        assert _relative_error(out[tap][..., : kept.shape[-1]], kept) < TOLERANCE, tap
        assert _relative_error(out[tap].mean(axis=(0, 1, 2)), ref[f"mean_{tap}"]) < TOLERANCE
    assert _relative_error(out["logits"], ref["logits"]) < TOLERANCE
    np.testing.assert_array_equal(out["logits"].argmax(-1), ref["logits"].argmax(-1))
