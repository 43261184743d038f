"""Hostile weights files, second round: stride-0 / huge tensors, zip bombs and .npz headers that
announce terabytes are refused with WeightsFileError before anything is allocated."""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest

from fedmix_jax import weights_files
from fedmix_jax.reference_weights import WeightsFileError, load_reference_weights
from hang_alarm import alarm_fixture  # noqa: E402


# A few pickle opcodes, enough for a torch-style state_dict (as in
# tests/test_reference_weights_security.py).
def _g(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"        # GLOBAL


def _s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b                          # BINUNICODE


def _i(v):
    return b"J" + struct.pack("<i", v)                                   # BININT


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"                                 # MARK ... TUPLE


_ODICT = _g("collections", "OrderedDict") + b")R"                         # OrderedDict()


def _state_dict_pickle(items):
    body = b"".join(_s(k) + v for k, v in items)
    return b"\x80\x02" + _ODICT + b"(" + body + b"u."


alarm = alarm_fixture(60)


def _pth(path, size, stride, numel=1, storage=None, compress=zipfile.ZIP_STORED):
    t = (_g("torch._utils", "_rebuild_tensor_v2")
         + _tuple(_tuple(_s("storage"), _g("torch", "FloatStorage"), _s("0"), _s("cpu"),
                         _i(numel)) + b"Q", _i(0), _tuple(*map(_i, size)),
                  _tuple(*map(_i, stride)), b"\x89", _ODICT) + b"R")
    with zipfile.ZipFile(path, "w", compress) as zf:
        zf.writestr("archive/data.pkl", _state_dict_pickle([("outc.conv.bias", t)]))
        zf.writestr("archive/data/0", storage if storage is not None
                    else np.ones(numel, np.float32).tobytes())
    return path


@pytest.mark.parametrize("size,stride", [((500_000_000,), (0,)),          # 1.9 GB from 4 bytes
                                         ((50_000, 50_000), (0, 0)),      # 9.3 GiB
                                         ((2, 300_000_000), (0, 0))])
def test_stride_zero_tensor_is_refused_before_allocating(tmp_path, size, stride):
    path = _pth(tmp_path / "w.pth", size, stride)
    assert path.stat().st_size < 1000
    with pytest.raises(WeightsFileError, match="over 1024 MiB.*refused before") as e:
        load_reference_weights(path)
    assert str(path) in str(e.value)


def test_small_stride_zero_tensor_still_reads(tmp_path):
    path = _pth(tmp_path / "w.pth", (3,), (0,))
    got = weights_files.read_weights_file(str(path))
    np.testing.assert_array_equal(got["outc.conv.bias"], np.ones(3, np.float32))


def test_zip_bomb_storage_is_refused_before_decompressing(tmp_path, monkeypatch):
    """Budget lowered to 1 MiB so the bomb stays small: a 2 MiB record of zeros deflates to a
    few KB; its declared size is charged before it is read."""
    monkeypatch.setattr(weights_files, "_MAX_TOTAL_BYTES", 1 << 20)
    n = (2 << 20) // 4
    path = _pth(tmp_path / "w.pth", (n,), (1,), numel=n, storage=bytes(4 * n),
                compress=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 20_000
    reads = []
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, *a: reads.append(name) or b"")
    with pytest.raises(WeightsFileError, match="storage records of this file over 1 MiB"):
        weights_files.read_weights_file(str(path))
    assert not [r for r in reads if r.endswith("data/0")]


def _npy(header: dict) -> bytes:
    h = repr(header).encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h


@pytest.mark.parametrize("header,match", [
    ({"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)}, "announces"),   # 4 TB
    ({"descr": "<f4", "fortran_order": False, "shape": (2 ** 62, 2 ** 62)}, "announces"),
    ({"descr": "<f4", "fortran_order": False, "shape": ((((3,),),),)}, "cannot read"),
    ({"descr": "<f4", "fortran_order": False, "shape": (3,), "x": [[[[[[1]]]]]]}, "cannot read"),
    ({"descr": "<f4", "fortran_order": False, "shape": (3,), "x": "[" * 6000}, "cannot read"),
])
def test_npz_headers_are_checked_before_allocating(tmp_path, header, match):
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("param/outc.conv.bias.npy", _npy(header) + bytes(12))
    with pytest.raises(WeightsFileError, match=match) as e:
        load_reference_weights(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_deeply_nested_npz_dtype_is_one_short_line(tmp_path):
    descr = "<f4"
    for _ in range(70):
        descr = [("a", descr)]
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("param/outc.conv.bias.npy",
                    _npy({"descr": descr, "fortran_order": False, "shape": (3,)}) + bytes(12))
    with pytest.raises(WeightsFileError) as e:
        load_reference_weights(path)
    assert len(str(e.value)) < 500 and "\n" not in str(e.value)
