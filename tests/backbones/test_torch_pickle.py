"""The torch-free, restricted .pth reader: real torch files, crafted malicious ones, formats."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anomjax.backbones import (
    TorchFileError,
    UnsafePickleError,
    find_weights,
    read_state_dict,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "backbones"


@pytest.mark.parametrize("filename", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_reads_files_written_by_torch_save(filename):
    expected = np.load(FIXTURES / "tiny_expected.npz")
    state = read_state_dict(FIXTURES / filename)
    assert sorted(state) == sorted(expected.files)
    for name in expected.files:
        np.testing.assert_array_equal(state[name].astype(expected[name].dtype), expected[name])
    assert state["half"].dtype == np.float16
    assert state["steps"].dtype == np.int64
    assert state["transposed"].shape == (6, 4)


def test_reads_the_packaged_efficientnet_lite0_file():
    path = find_weights("efficientnet_lite0")
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth"
    state = read_state_dict(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in state.values())


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": _RunsShell(f"touch {marker}")}, protocol=2)


def test_malicious_zip_pth_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", _malicious_pickle(marker))
    with pytest.raises(UnsafePickleError, match=r"evil\.pth.*'posix\.system'"):
        read_state_dict(path)
    assert not marker.exists()


def test_malicious_legacy_pth_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    stream = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, stream, protocol=2)
    stream.write(_malicious_pickle(marker))
    path.write_bytes(stream.getvalue())
    with pytest.raises(UnsafePickleError, match="posix.system"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("subprocess", "Popen"),
                                         ("torch", "load"), ("numpy", "frombuffer")])
def test_every_other_global_is_refused(tmp_path, module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x/data.pkl", payload)
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        read_state_dict(path)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    # _rebuild_tensor_v2(storage of 4 floats, offset 0, size (10,), stride (1,)).
    pid = (b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
           b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ")
    payload = (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(" + pid
               + b"K\x00K\n\x85K\x01\x85\x89}tRs.")
    path = tmp_path / "oob.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("oob/data.pkl", payload)
        archive.writestr("oob/data/0", np.arange(4, dtype=np.float32).tobytes())
    with pytest.raises(TorchFileError, match=r"oob\.pth.*past the end"):
        read_state_dict(path)


def test_garbage_and_unknown_formats_give_clear_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a pickle")
    with pytest.raises(TorchFileError, match="junk.pth"):
        read_state_dict(junk)
    with pytest.raises(ValueError, match=r"unknown weights format '\.h5'"):
        (tmp_path / "w.h5").write_bytes(b"")
        read_state_dict(tmp_path / "w.h5")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        read_state_dict(tmp_path / "nothere.pth")


def test_safetensors_and_npz_round_trip(tmp_path):
    from safetensors.numpy import save_file

    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b.bias": np.ones(4, np.float32)}
    save_file(state, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", **state)
    for name in ("w.safetensors", "w.npz"):
        loaded = read_state_dict(tmp_path / name)
        assert sorted(loaded) == sorted(state)
        for key, value in state.items():
            np.testing.assert_array_equal(loaded[key], value)


def _int(value: int) -> bytes:
    return b"J" + value.to_bytes(4, "little", signed=True)


def _text(value: str) -> bytes:
    return b"X" + len(value).to_bytes(4, "little") + value.encode()


def _state_dict_pickle(tensors: list[tuple[str, str, int, int]]) -> bytes:
    """``{name: float32 tensor of size (n,) on storage key (numel elements)}`` as a pickle."""
    out = b"\x80\x02}"
    for name, key, numel, n in tensors:
        pid = (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text(key) + _text("cpu")
               + _int(numel) + b"tQ")
        out += (_text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00"
                + _int(n) + b"\x85K\x01\x85\x89}tRs")
    return out + b"."


def _zip_pth(path: Path, tensors, members: dict[str, bytes], compress: bool = True) -> Path:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("m/data.pkl", _state_dict_pickle(tensors))
        for key, raw in members.items():
            archive.writestr(f"m/data/{key}", raw)
    return path


def test_crafted_state_dict_pickle_round_trips(tmp_path):
    path = _zip_pth(tmp_path / "ok.pth", [("w", "0", 4, 4)],
                    {"0": np.arange(4, dtype=np.float32).tobytes()})
    np.testing.assert_array_equal(read_state_dict(path)["w"], np.arange(4, dtype=np.float32))


def test_member_larger_than_its_declared_four_elements_is_not_decompressed(tmp_path):
    import tracemalloc

    path = _zip_pth(tmp_path / "lie.pth", [("w", "0", 4, 4)], {"0": bytes(64 << 20)})
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(TorchFileError, match=r"declares 4 elements \(16 bytes\) but its "
                                                 r"archive member holds 67108864 bytes"):
            read_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_decompression_bomb_is_refused_before_decompressing(tmp_path):
    # 64 MiB of zeros, honestly declared, in a file of about 64 KiB.
    n = 16 << 20
    path = _zip_pth(tmp_path / "bomb.pth", [("w", "0", n, n)], {"0": bytes(4 * n)})
    with pytest.raises(TorchFileError, match=r"bomb\.pth: declares 67108864 bytes of storages "
                                             r"but the file is only \d+ bytes"):
        read_state_dict(path)


def test_many_views_of_one_storage_are_refused_before_copying(tmp_path):
    n = 256 << 10  # one 1 MiB storage, stored uncompressed, viewed by 24 tensors
    path = _zip_pth(tmp_path / "views.pth", [(f"w{i}", "0", n, n) for i in range(24)],
                    {"0": bytes(4 * n)}, compress=False)
    with pytest.raises(TorchFileError, match=r"declares 25165824 bytes of tensors"):
        read_state_dict(path)


def test_self_referencing_dict_and_corrupt_files_give_clear_errors(tmp_path):
    loop: dict = {}
    loop["self"] = loop
    path = tmp_path / "loop.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", pickle.dumps(loop, protocol=2))
    with pytest.raises(TorchFileError, match="nested more than 32 levels"):
        read_state_dict(path)

    good = _zip_pth(tmp_path / "crc.pth", [("w", "0", 4, 4)],
                    {"0": np.arange(4, dtype=np.float32).tobytes()}, compress=False)
    raw = bytearray(good.read_bytes())
    at = raw.index(np.arange(4, dtype=np.float32).tobytes())
    raw[at] ^= 0xFF
    good.write_bytes(bytes(raw))
    with pytest.raises(TorchFileError, match=r"crc\.pth: corrupt archive \(BadZipFile"):
        read_state_dict(good)

    legacy = tmp_path / "legacy_huge.pth"
    stream = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, stream, protocol=2)
    stream.write(_state_dict_pickle([("w", "0", 4, 4)]))
    pickle.dump(["0"], stream, protocol=2)
    stream.write((1 << 60).to_bytes(8, "little"))
    legacy.write_bytes(stream.getvalue())
    with pytest.raises(TorchFileError, match=r"declares 1152921504606846976 elements, more than"):
        read_state_dict(legacy)


def test_npz_bomb_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, w=np.zeros(16 << 20, np.float32))
    with pytest.raises(ValueError, match=r"bomb\.npz: declares \d+ bytes of arrays"):
        read_state_dict(path)
