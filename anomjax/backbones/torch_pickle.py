"""Read PyTorch ``.pth`` state dicts without PyTorch and without running pickled code.

A ``.pth`` file is either a zip archive (``torch.save`` since 1.6: ``<name>/data.pkl`` plus
one raw file per storage) or the legacy stream (four pickles followed by raw storages). Both
keep tensors as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls
inside a pickle. :class:`_RestrictedUnpickler` resolves exactly those globals (tensor rebuild
functions, typed storages, ``collections.OrderedDict``) to harmless local stand-ins and refuses
every other global with :class:`UnsafePickleError`, so a crafted file cannot execute anything.

Sizes are checked before any byte is decompressed or copied: every storage's declared size
must equal its archive member's size, and all storages together, and all tensors together
(views of one storage are copied once each), may hold at most :data:`MAX_EXPANSION` times
the file's size on disk (``torch.save`` stores members uncompressed, and float weights
compress by well under 2x), so a small crafted file cannot claim gigabytes of memory.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Bytes a weights file may expand to in memory, per byte on disk (plus 1 MiB).
MAX_EXPANSION = 8
_MAX_NESTING = 32
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("float32"),
    "DoubleStorage": np.dtype("float64"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
    "UntypedStorage": np.dtype("uint8"),
}


class UnsafePickleError(ValueError):
    """A ``.pth`` pickle asks for something other than tensors, storages and dicts."""


class TorchFileError(ValueError):
    """A ``.pth`` file is malformed, truncated or of an unsupported kind."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only remembers the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
    """A storage named in the pickle; its bytes are attached later (legacy) or at once (zip)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int, view: tuple[str, int, int] | None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor as ``(storage, offset, size, stride)``; materialised once storages are read."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                    *_: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (and v1): validates and records."""
    if not isinstance(storage, _StorageRef):
        raise UnsafePickleError("tensor rebuild called without a storage argument")
    if not (isinstance(size, tuple) and isinstance(stride, tuple)) or len(size) != len(stride):
        raise TorchFileError(f"malformed tensor header: size={size!r}, stride={stride!r}")
    if not all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride)):
        raise TorchFileError(f"malformed tensor header: offset={storage_offset!r}, "
                             f"size={size!r}, stride={stride!r}")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its tensor."""
    if not isinstance(data, _TensorRef):
        raise UnsafePickleError("parameter rebuild called without a tensor argument")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only tensors, storages and (ordered) dicts."""

    def __init__(self, file: BinaryIO, source: str, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self.source = source
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global '{module}.{name}'; a weights file may "
                "only contain tensors, storages and dicts (this file could execute code: "
                "do not load it with torch.load either)")
        return found

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self.source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise TorchFileError(f"{self.source}: malformed storage size {numel!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel), view)
        return self.storages[key]


def expansion_budget(path: str | Path) -> int:
    """The most bytes the weights file ``path`` may expand to in memory."""
    return MAX_EXPANSION * os.path.getsize(path) + (1 << 20)


def check_declared_size(path: str | Path, declared: int, what: str) -> None:
    """Refuse ``declared`` bytes beyond :func:`expansion_budget` (before reading them)."""
    budget = expansion_budget(path)
    if declared > budget:
        raise TorchFileError(
            f"{path}: declares {declared} bytes of {what} but the file is only "
            f"{os.path.getsize(path)} bytes; refusing to expand it more than {MAX_EXPANSION}x "
            "(a corrupt file or a decompression bomb)")


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict file into ``{name: np.ndarray}`` (copies, native byte order).

    Raises:
      UnsafePickleError: the pickle names any global other than tensors/storages/dicts.
      TorchFileError: the file is not a readable ``.pth``, holds no tensor dict, or declares
        more data than its size allows.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path)
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f, str(path), os.path.getsize(path))
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise TorchFileError(f"{path}: corrupt archive ({type(err).__name__}: {err})") from None
    tensors = _collect_tensors(obj, str(path))
    check_declared_size(path, sum(_nbytes(t) for t in tensors.values()), "tensors")
    return {name: _materialise(t, str(path)) for name, t in tensors.items()}


def _nbytes(t: _TensorRef) -> int:
    return math.prod(t.size) * t.storage.dtype.itemsize


def _unpickle(file: BinaryIO, source: str, storages: dict[str, _StorageRef]) -> Any:
    """One restricted unpickling; any failure becomes an error that names ``source``."""
    try:
        return _RestrictedUnpickler(file, source, storages).load()
    except (UnsafePickleError, TorchFileError) as err:
        if source in str(err):
            raise
        raise type(err)(f"{source}: {err}") from None
    except Exception as err:  # noqa: BLE001 - malformed input can fail in many ways
        raise TorchFileError(f"{source}: not a readable PyTorch weights file "
                             f"({type(err).__name__}: {err})") from None


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: zip archive without exactly one data.pkl "
                                 f"(found {len(pickles)}); not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        storages: dict[str, _StorageRef] = {}
        pickle_info = archive.getinfo(pickles[0])
        check_declared_size(path, pickle_info.file_size, "pickle")
        obj = _unpickle(io.BytesIO(archive.read(pickles[0])), str(path), storages)
        check_declared_size(path, sum(r.numel * r.dtype.itemsize for r in storages.values()),
                            "storages")
        for key, ref in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise TorchFileError(f"{path}: storage {member!r} is missing from the archive")
            expected = ref.numel * ref.dtype.itemsize
            if archive.getinfo(member).file_size != expected:
                raise TorchFileError(
                    f"{path}: storage {key!r} declares {ref.numel} elements ({expected} bytes) "
                    f"but its archive member holds {archive.getinfo(member).file_size} bytes")
            with archive.open(member) as f:
                raw = f.read(expected + 1)  # never decompress past the declared size
            _attach(ref, raw, byteorder, str(path))
    return obj


def _read_legacy(f: BinaryIO, source: str, file_size: int) -> Any:
    storages: dict[str, _StorageRef] = {}

    def load() -> Any:
        return _unpickle(f, source, storages)

    if load() != _LEGACY_MAGIC:
        raise TorchFileError(f"{source}: not a PyTorch weights file (bad magic number)")
    if load() != 1001:
        raise TorchFileError(f"{source}: unsupported legacy PyTorch protocol version")
    sys_info = load()
    byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get(
        "little_endian", True) else "big"
    obj = load()
    keys = load()
    if not isinstance(keys, list):
        raise TorchFileError(f"{source}: malformed storage key list")
    for key in keys:
        ref = storages.get(str(key))
        header = f.read(8)
        if ref is None or len(header) != 8:
            raise TorchFileError(f"{source}: storage {key!r} is missing or truncated")
        numel = int.from_bytes(header, "little" if byteorder == "little" else "big")
        if numel * ref.dtype.itemsize > file_size - f.tell():
            raise TorchFileError(f"{source}: storage {key!r} declares {numel} elements, more "
                                 "than the rest of the file holds (truncated or corrupt)")
        _attach(ref, f.read(numel * ref.dtype.itemsize), byteorder, source, numel)
    return obj


def _attach(ref: _StorageRef, raw: bytes, byteorder: str, source: str,
            numel: int | None = None) -> None:
    numel = ref.numel if numel is None else numel
    if len(raw) != numel * ref.dtype.itemsize:
        raise TorchFileError(f"{source}: storage {ref.key!r} is truncated")
    dtype = ref.dtype.newbyteorder("<" if byteorder == "little" else ">")
    ref.data = np.frombuffer(raw, dtype=dtype, count=numel).astype(ref.dtype, copy=False)


def _materialise(t: _TensorRef, source: str) -> np.ndarray:
    ref = t.storage
    if ref.view is not None:
        raise TorchFileError(f"{source}: storage views (legacy view_metadata) are not supported")
    if ref.data is None:
        raise TorchFileError(f"{source}: storage {ref.key!r} has no data")
    n = ref.data.size
    last = t.offset + sum((s - 1) * st for s, st in zip(t.size, t.stride, strict=True))
    if any(s == 0 for s in t.size):
        return np.zeros(t.size, ref.dtype)
    if last >= n:
        raise TorchFileError(f"{source}: tensor reaches past the end of storage {ref.key!r}")
    item = ref.data.itemsize
    view = np.lib.stride_tricks.as_strided(
        ref.data[t.offset:], shape=t.size, strides=tuple(s * item for s in t.stride),
        writeable=False)
    return np.array(view)


def _collect_tensors(obj: Any, source: str, depth: int = 0) -> dict[str, _TensorRef]:
    """``{name: tensor}`` from a state dict, or from ``{"state_dict"|"model": state_dict}``."""
    if depth > _MAX_NESTING:
        raise TorchFileError(f"{source}: state dict nested more than {_MAX_NESTING} levels "
                             "deep (self-referencing?)")
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise TorchFileError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, _TensorRef] = {}
    for name, value in obj.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value
        elif isinstance(value, Mapping):
            for sub, tensor in _collect_tensors(value, source, depth + 1).items():
                out[f"{name}.{sub}"] = tensor
    if not out and depth == 0:
        raise TorchFileError(f"{source}: contains no tensors")
    return out
