"""Weights files are untrusted input: nothing in them is ever executed, only finite float arrays
with the reference names and shapes are accepted, and every refusal names the file (and key).

No torch needed: the ``.pth`` files are written here by hand in torch's zip layout
(``archive/data.pkl`` + ``archive/data/<key>``), with pickles emitted opcode by opcode.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import zipfile

import jax
import numpy as np
import pytest

from fedmix_jax.reference_weights import (WeightsFileError, load_reference_weights,
                                          params_from_state_dict)

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference",
                   "unet_w4_in3_out3.npz")


def _state_dict():
    with np.load(REF) as d:
        return {k[len("param/"):]: d[k] for k in d.files if k.startswith("param/")}


# ------------------------------------------------------------------ a torch-style pickle writer

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


def _tensor(key, arr, storage="FloatStorage", hooks=_ODICT):
    pid = _tuple(_s("storage"), _g("torch", storage), _s(key), _s("cpu"), _i(arr.size)) + b"Q"
    stride = [int(s // arr.itemsize) for s in arr.strides]
    return (_g("torch._utils", "_rebuild_tensor_v2")
            + _tuple(pid, _i(0), _tuple(*map(_i, arr.shape)), _tuple(*map(_i, stride)),
                     b"\x89", hooks) + b"R")


def _state_dict_pickle(items):
    """``items``: [(name, pickled value bytes)] -> an OrderedDict pickle (protocol 2), with the
    ``_metadata`` attribute torch's ``state_dict()`` sets (restored through BUILD)."""
    body = b"".join(_s(k) + v for k, v in items)
    metadata = b"}" + _s("_metadata") + _ODICT + _s("") + b"}" + _s("version") + _i(1) + b"sss"
    return b"\x80\x02" + _ODICT + b"(" + body + b"u" + metadata + b"b."


def write_pth(path, state_dict, *, pickle_bytes=None, extra=None, dtype=np.float32):
    """A zip in torch.save's layout. ``pickle_bytes`` replaces data.pkl; ``extra`` maps a key to
    raw pickled value bytes inserted into the state_dict."""
    storages, items = {}, []
    for i, (k, v) in enumerate(state_dict.items()):
        v = np.ascontiguousarray(v, dtype)
        storages[str(i)] = v.tobytes()
        items.append((k, _tensor(str(i), v, {np.float32: "FloatStorage",
                                             np.float64: "DoubleStorage",
                                             np.int64: "LongStorage"}[dtype])))
    for k, raw in (extra or {}).items():
        items.append((k, raw))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes or _state_dict_pickle(items))
        zf.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")


class _Evil:
    """Pickles as ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilWrite:
    """Pickles as ``builtins.exec(<code writing the marker>)``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


# --------------------------------------------------------------------------------------- tests

def test_handmade_pth_loads_without_torch_and_equals_npz(tmp_path):
    assert "torch" not in sys.modules
    sd = _state_dict()
    path = tmp_path / "w.pth"
    write_pth(path, sd)
    model, params = load_reference_weights(path)
    assert (model.width, model.num_classes, model.depth) == (4, 3, 4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_from_state_dict(sd))
    # float64 storages, a {'state_dict': ...} wrapper and "module." prefixes are accepted too
    write_pth(tmp_path / "w64.pt", sd, dtype=np.float64)
    _, p64 = load_reference_weights(tmp_path / "w64.pt")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, p64)
    assert "torch" not in sys.modules


@pytest.mark.parametrize("payload", ["os_system", "exec", "hidden_in_hooks", "raw_pickle"])
def test_malicious_pth_runs_nothing(tmp_path, payload):
    marker = tmp_path / "PWNED"
    sd = _state_dict()
    path = tmp_path / "evil.pth"
    if payload == "os_system":      # a whole data.pkl that is a plain malicious pickle
        write_pth(path, sd, pickle_bytes=pickle.dumps(_Evil(marker), protocol=2))
    elif payload == "exec":         # an extra entry of an otherwise valid state_dict
        raw = pickle.dumps(_EvilWrite(marker), protocol=2)[2:-1]   # strip PROTO and STOP
        write_pth(path, sd, extra={"outc.conv.extra": raw})
    elif payload == "hidden_in_hooks":   # inside a tensor's rebuild arguments
        evil = _g("posix", "system") + _tuple(_s(f"touch {marker}")) + b"R"
        items = [("outc.conv.bias", _tensor("0", np.zeros(3, np.float32), hooks=evil))]
        write_pth(path, {"outc.conv.bias": np.zeros(3)},
                  pickle_bytes=_state_dict_pickle(items))
    else:                           # a legacy/plain pickle file named .pth (not a zip)
        path.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(WeightsFileError) as e:
        load_reference_weights(path)
    assert not marker.exists()
    assert str(path) in str(e.value) and e.value.path == str(path)
    if payload != "raw_pickle":
        assert "refused global" in str(e.value)
        assert "system'" in str(e.value) or "exec'" in str(e.value)
    else:
        assert "not a zip-format PyTorch checkpoint" in str(e.value)


def test_the_payloads_are_live(tmp_path):
    """Sanity check of the test itself: an ordinary unpickler does run these payloads."""
    for i, cls in enumerate((_Evil, _EvilWrite)):
        marker = tmp_path / f"LIVE{i}"
        pickle.loads(pickle.dumps(cls(marker), protocol=2))
        assert marker.exists()


def test_malicious_npz_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    sd = _state_dict()
    arrays = {f"param/{k}": v for k, v in sd.items()}
    arrays["param/outc.conv.bias"] = np.array([_Evil(marker)], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays)           # savez pickles object arrays
    with pytest.raises(WeightsFileError, match=r"outc\.conv\.bias.*pickled") as e:
        load_reference_weights(path)
    assert e.value.key == "outc.conv.bias" and str(path) in str(e.value)
    # a pickle renamed .npz
    renamed = tmp_path / "pickle.npz"
    renamed.write_bytes(pickle.dumps(_EvilWrite(marker)))
    with pytest.raises(WeightsFileError, match="pickled content is refused"):
        load_reference_weights(renamed)
    assert not marker.exists()


@pytest.mark.parametrize("ext", [".npz", ".pth"])
@pytest.mark.parametrize("bad", ["nan", "inf", "int", "shape", "missing", "unexpected"])
def test_bad_arrays_are_refused_naming_file_and_key(tmp_path, ext, bad):
    sd = dict(_state_dict())
    key = "up2.conv.double_conv.1.weight"
    if bad == "nan":
        sd[key] = sd[key].copy()
        sd[key][1] = np.nan
    elif bad == "inf":
        sd[key] = sd[key].copy()
        sd[key][0] = -np.inf
    elif bad == "int":
        sd[key] = sd[key].astype(np.int64)
    elif bad == "shape":
        sd[key] = np.zeros(7, np.float32)
    elif bad == "missing":
        del sd[key]
    else:
        key = "down1.maxpool_conv.1.double_conv.9.weight"
        sd[key] = np.zeros(3, np.float32)
    path = tmp_path / f"w{ext}"
    if ext == ".npz":
        np.savez(path, **{f"param/{k}": v for k, v in sd.items()})
    elif bad == "int":
        items = [(key, _tensor("i0", sd[key], "LongStorage"))]   # one int64 tensor
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", _state_dict_pickle(items))
            zf.writestr("archive/data/i0", sd[key].tobytes())
    else:
        write_pth(path, sd)
    with pytest.raises(WeightsFileError) as e:
        load_reference_weights(path)
    msg = str(e.value)
    assert str(path) in msg and key in msg, msg
    if bad in ("nan", "inf"):
        assert "non-finite" in msg and e.value.key == key
    if bad == "int":
        assert "expected a float tensor" in msg


@pytest.mark.parametrize("how", ["truncated", "missing_storage", "short_storage", "overreach",
                                 "huge_claim", "not_a_state_dict", "directory"])
def test_damaged_pth_is_refused(tmp_path, how):
    sd = _state_dict()
    path = tmp_path / "w.pth"
    write_pth(path, sd)
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how in ("missing_storage", "short_storage"):
        with zipfile.ZipFile(path) as zf:
            recs = {n: zf.read(n) for n in zf.namelist()}
        if how == "missing_storage":
            del recs["archive/data/3"]
        else:
            recs["archive/data/3"] = recs["archive/data/3"][:5]
        with zipfile.ZipFile(path, "w") as zf:
            for n, b in recs.items():
                zf.writestr(n, b)
    elif how == "overreach":   # a tensor claiming more elements than its storage holds
        t = (_g("torch._utils", "_rebuild_tensor_v2")
             + _tuple(_tuple(_s("storage"), _g("torch", "FloatStorage"), _s("0"), _s("cpu"),
                             _i(4)) + b"Q", _i(2), _tuple(_i(1000)), _tuple(_i(1)), b"\x89",
                      _ODICT) + b"R")
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", _state_dict_pickle([("outc.conv.bias", t)]))
            zf.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    elif how == "huge_claim":  # a storage claiming 2**40 floats: refused before reading it
        t = (_g("torch._utils", "_rebuild_tensor_v2")
             + _tuple(_tuple(_s("storage"), _g("torch", "FloatStorage"), _s("0"), _s("cpu"),
                             b"\x8a\x06" + (1 << 40).to_bytes(6, "little")) + b"Q",
                      _i(0), _tuple(_i(3)), _tuple(_i(1)), b"\x89", _ODICT) + b"R")
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", _state_dict_pickle([("outc.conv.bias", t)]))
            zf.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    elif how == "not_a_state_dict":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", b"\x80\x02" + _i(3) + b".")
    else:
        os.remove(path)
        os.mkdir(path)
    with pytest.raises(WeightsFileError) as e:
        load_reference_weights(path)
    assert str(path) in str(e.value)
    if how == "huge_claim":
        assert "over 1024 MiB" in str(e.value)


@pytest.mark.parametrize("target", [("torch", "FloatStorage"),
                                    ("torch._utils", "_rebuild_tensor_v2"),
                                    ("collections", "OrderedDict")])
@pytest.mark.parametrize("slot", [False, True])
def test_build_cannot_alter_the_stand_ins(tmp_path, target, slot):
    """A pickle's BUILD opcode on an allowed global (dict state, or the (None, slotstate) form
    that calls setattr) is refused, and the next load is unaffected."""
    state = b"}" + _s("dtype") + _s("O") + b"s"
    if slot:
        state = b"(N" + state + b"t"
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + _g(*target) + state + b"b.")
    with pytest.raises(WeightsFileError):
        load_reference_weights(evil)
    good = tmp_path / "good.pth"
    write_pth(good, _state_dict())
    load_reference_weights(good)
