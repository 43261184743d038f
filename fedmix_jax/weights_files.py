"""Reading weights files without running anything from them: ``.npz`` and torch ``.pth``/``.pt``.

:func:`read_weights_file` returns parameter name -> float32 array; ``.npz`` is read with
``allow_pickle=False``, zip-format torch checkpoints without torch by a restricted unpickler; sizes
are budgeted before reading; anything else raises :class:`WeightsFileError` naming the file and
entry. What is refused and why: docs/data_faults.md ("Weights files").
"""
from __future__ import annotations

import collections
import functools
import os
import pickle
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from fedmix_jax.errors import first_line


class WeightsFileError(ValueError):
    """A weights file is refused; ``path`` names the file and ``key`` the entry (or None)."""

    def __init__(self, message: str, path: str | os.PathLike, key: str | None = None):
        super().__init__(message)
        self.path, self.key = os.fspath(path), key


# What a damaged or hostile file can make the readers raise (each becomes a WeightsFileError).
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, OverflowError, RecursionError, MemoryError,
                SyntaxError, TypeError, KeyError)


class _Budget:
    """Bytes a file may still make the reader read or allocate (see :data:`_MAX_TOTAL_BYTES`);
    over it, ``charge`` raises ``error(message)``."""

    def __init__(self, what: str, error=pickle.UnpicklingError):
        self.what, self.left, self.error = what, _MAX_TOTAL_BYTES, error

    def charge(self, nbytes: int, name: str) -> None:
        if nbytes > self.left:
            raise self.error(
                f"'{name}' would bring the {self.what} of this file over "
                f"{_MAX_TOTAL_BYTES >> 20} MiB ({nbytes} more bytes); refused before reading")
        self.left -= nbytes


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


def _check_npz_headers(path: str) -> None:
    """Each ``.npy`` entry's header (shape x dtype) must fit its stored size and, all together,
    :data:`_MAX_TOTAL_BYTES`, before NumPy allocates anything."""
    budget = _Budget("arrays", lambda msg: WeightsFileError(
        f"cannot read weights file '{path}': {msg}", path))
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = _NPY_HEADER_READERS.get(version)
                if read_header is None:
                    raise WeightsFileError(f"cannot read weights file '{path}': entry "
                                           f"'{info.filename}' is .npy format {version}, not "
                                           "1.0 or 2.0", path)
                shape, _, dtype = read_header(f)
            if dtype.hasobject:
                continue    # np.load refuses it below, naming the entry
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if nbytes > info.file_size:
                raise WeightsFileError(f"cannot read weights file '{path}': entry "
                                       f"'{info.filename}' announces {str(shape)[:80]} of "
                                       f"{str(dtype)[:40]} ({nbytes} bytes) but holds "
                                       f"{info.file_size} bytes; refused before reading", path)
            budget.charge(nbytes, info.filename)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz``, never unpickling (``allow_pickle=False``; object arrays refused)."""
    try:
        if zipfile.is_zipfile(path):
            _check_npz_headers(path)
        data = np.load(path, allow_pickle=False)
    except WeightsFileError:
        raise
    except ValueError as e:  # e.g. a pickle file renamed .npz
        raise WeightsFileError(f"cannot read weights file '{path}': not an .npz of plain arrays "
                               f"({first_line(e)}); pickled content is refused", path) from None
    except (*_READ_ERRORS, pickle.UnpicklingError) as e:
        raise WeightsFileError(f"cannot read weights file '{path}': {type(e).__name__}: "
                               f"{first_line(e)}", path) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise WeightsFileError(f"'{path}' is a single .npy array, not an .npz of named arrays",
                               path)
    out = {}
    with data:
        prefix = "param/" if any(k.startswith("param/") for k in data.files) else ""
        for k in [k for k in data.files if k.startswith(prefix)]:
            name = k[len(prefix):]
            try:
                out[name] = data[k]
            except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise WeightsFileError(f"'{path}': entry '{k}' holds pickled objects, which are "
                                       f"refused ({e})", path, name) from None
            except _READ_ERRORS as e:
                raise WeightsFileError(f"'{path}': entry '{k}' is unreadable: "
                                       f"{type(e).__name__}: {first_line(e)}", path, name) from None
    return out


# PyTorch zip checkpoints (torch >= 1.6): ``<archive>/data.pkl``, a pickle whose tensors are
# ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` with storages as
# persistent ids ``('storage', torch.FloatStorage, key, location, numel)``, and
# ``<archive>/data/<key>``, each storage's little-endian bytes.

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_}
_MAX_PICKLE_BYTES = 64 << 20
# Budgets of one file, checked before anything is read or allocated: the bytes of all its storage
# records (or .npz entries) together, and of all the tensors built from them together (a stride-0
# tensor can be far larger than its storage). The paper's U-Net (width 64) is 124 MB in all.
_MAX_TOTAL_BYTES = 1 << 30


class _Frozen:
    """Base of the stand-ins: no ``__dict__`` and no attribute setting, so a pickle's BUILD
    opcode cannot alter them (each load also gets fresh ones)."""

    __slots__ = ()

    def __setattr__(self, key, value):
        raise pickle.UnpicklingError(f"refused: setting attribute {key!r} of {self!r}")


class _Marker(_Frozen):
    """Stand-in for ``torch.<X>Storage`` (``dtype`` set) or for a class that is only ever passed
    around (``torch.Tensor``, ``Parameter``; ``dtype`` None)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype | None = None):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self):
        return self.name


class _Call(_Frozen):
    """A callable stand-in wrapping one of the rebuild functions below."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<{self.fn.__name__}>"


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None, *, budget: _Budget):
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("a tensor without a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride))):
        raise pickle.UnpicklingError(f"bad tensor geometry offset={storage_offset!r} "
                                     f"size={size!r} stride={stride!r}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    # before allocating: a stride-0 tensor may be far larger than its storage
    budget.charge(int(np.prod(size, dtype=object)) * storage.itemsize, f"tensor of size {size}")
    last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(f"tensor of size {size} (offset {storage_offset}, stride "
                                     f"{stride}) reaches past its storage of {storage.size} "
                                     "elements")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size, writeable=False,
                                           strides=[st * storage.itemsize for st in stride])
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("a Parameter without tensor data")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not (isinstance(func, _Call) and getattr(func.fn, "func", None) is _rebuild_tensor_v2) \
            or not (isinstance(new_type, _Marker)
                    and new_type.name in ("torch.Tensor", "torch.nn.Parameter")) \
            or not isinstance(args, tuple):
        raise pickle.UnpicklingError("only plain tensors may be rebuilt")
    return func(*args)


def _safe_globals() -> dict:
    """The only globals a checkpoint may name, as fresh stand-ins (one set per load, with the
    load's tensor budget)."""
    rebuild = functools.partial(_rebuild_tensor_v2, budget=_Budget("tensors"))
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _Call(rebuild),
        ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
        ("torch._tensor", "_rebuild_from_type_v2"): _Call(_rebuild_from_type_v2),
        ("torch", "Tensor"): _Marker("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.Parameter"),
        **{("torch", name): _Marker(f"torch.{name}", np.dtype(dt))
           for name, dt in _TORCH_STORAGE_DTYPES.items()}}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :func:`_safe_globals` (storages: from the zip); nothing else is reachable."""

    def __init__(self, file, storage_bytes):
        super().__init__(file)
        self._globals = _safe_globals()
        self._storage_bytes = storage_bytes
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        obj = self._globals.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refused global '{module}.{name}': only tensors and (Ordered)dicts of tensors "
                "are accepted, so no code from the file is run")
        return obj

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _Marker) and pid[1].dtype is not None
                and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.120}")
        stype, key, numel = pid[1], pid[2], pid[4]
        if key not in self._storages:
            raw = self._storage_bytes(key, numel * stype.dtype.itemsize)
            self._storages[key] = np.frombuffer(raw, stype.dtype)
        return self._storages[key]


def _read_torch(path: str) -> Mapping[str, Any]:
    """A torch zip checkpoint's object (a state_dict), read without torch and without executing
    anything from the file (see the comment above)."""
    if not zipfile.is_zipfile(path):
        raise WeightsFileError(
            f"cannot read '{path}': not a zip-format PyTorch checkpoint (torch >= 1.6). Legacy "
            "torch files and plain pickles are refused because loading them can run code; "
            "re-save with a recent torch or export .npz: np.savez('weights.npz', "
            "**{'param/' + k: v.cpu().numpy() for k, v in model.state_dict().items()})", path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            pkls = [n for n in infos if n.split("/")[-1] == "data.pkl" and n.count("/") <= 1]
            if len(pkls) != 1:
                raise WeightsFileError(f"'{path}' is a zip but not a PyTorch checkpoint "
                                       f"(found {len(pkls)} data.pkl records)", path)
            prefix = pkls[0][: -len("data.pkl")]
            if infos[pkls[0]].file_size > _MAX_PICKLE_BYTES:
                raise WeightsFileError(f"'{path}': data.pkl is larger than "
                                       f"{_MAX_PICKLE_BYTES >> 20} MiB", path)
            order = prefix + "byteorder"
            if order in infos and zf.read(order).strip() not in (b"little", b""):
                raise WeightsFileError(f"'{path}' was written on a big-endian machine; "
                                       "not supported", path)

            storages = _Budget("storage records")

            def storage_bytes(key: str, nbytes: int) -> bytes:
                name = f"{prefix}data/{key}"
                info = infos.get(name)
                if info is None:
                    raise pickle.UnpicklingError(f"storage record '{name}' is missing")
                storages.charge(max(info.file_size, nbytes), name)   # before decompressing
                if info.file_size < nbytes:
                    raise pickle.UnpicklingError(f"storage record '{name}' holds "
                                                 f"{info.file_size} bytes, expected {nbytes}")
                return zf.read(name)[:nbytes]

            with zf.open(pkls[0]) as f:
                obj = _RestrictedUnpickler(f, storage_bytes).load()
    except WeightsFileError:
        raise
    except (*_READ_ERRORS, pickle.UnpicklingError, ValueError, AttributeError, IndexError) as e:
        raise WeightsFileError(f"refused weights file '{path}': {type(e).__name__}: "
                               f"{first_line(e)}", path) from None
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"'{path}' holds a {type(obj).__name__}, not a state_dict", path)
    return obj


_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _check_arrays(state_dict: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    """Only finite float arrays are accepted; returns them as float32 (errors name file and key)."""
    out = {}
    for key, value in state_dict.items():
        key = str(key)
        if not isinstance(value, np.ndarray) or value.dtype.name not in _FLOAT_DTYPES:
            what = (f"dtype {str(value.dtype)[:60]}" if isinstance(value, np.ndarray)
                    else f"a {type(value).__name__}")
            raise WeightsFileError(f"'{path}': '{key}' is {what}; expected a float tensor",
                                   path, key)
        value = value.astype(np.float32)
        bad = ~np.isfinite(value)
        if bad.any():
            raise WeightsFileError(f"'{path}': '{key}' holds {int(bad.sum())} non-finite "
                                   "value(s) (NaN/inf); refusing these weights", path, key)
        out[key] = value
    return out


def read_weights_file(path: str) -> dict[str, np.ndarray]:
    """The float32 arrays of an ``.npz`` or a zip-format torch checkpoint (``path``'s extension
    picks the reader), with a ``{'state_dict': ...}`` wrapper unwrapped; names as in the file."""
    raw = (_read_npz if os.path.splitext(path)[1].lower() == ".npz" else _read_torch)(path)
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    return _check_arrays(raw, path)
