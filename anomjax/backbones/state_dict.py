"""Read a weights file (``.pth``/``.pt``, ``.safetensors`` or ``.npz``) into ``{name: array}``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from anomjax.backbones.torch_pickle import check_declared_size, read_pth

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a weights file by name; the format is chosen by the file suffix.

    ``.pth``/``.pt``/``.bin`` are read by the restricted unpickler of
    :mod:`anomjax.backbones.torch_pickle` (never ``torch.load``); ``.npz`` is read with
    ``allow_pickle=False``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: unknown suffix or unreadable file (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt", ".bin"):
        return read_pth(path)
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable .safetensors file ({err})") from None
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as archive:
                check_declared_size(path, sum(i.file_size for i in archive.infolist()),
                                    "arrays")
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    raise ValueError(f"{path}: unknown weights format {suffix!r}; expected one of "
                     f"{', '.join(SUFFIXES)}")
