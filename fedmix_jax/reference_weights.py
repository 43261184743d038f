"""Reference PyTorch U-Net ``state_dict`` <-> :class:`~fedmix_jax.models.UNet` params.

Reference names (PyTorch, ``i`` = 1 .. depth)::

    inc.double_conv.{0,1,3,4}.{weight,bias}
    down{i}.maxpool_conv.1.double_conv.{0,1,3,4}.{weight,bias}
    up{i}.conv.double_conv.{0,1,3,4}.{weight,bias}
    outc.conv.{weight,bias}

In each ``double_conv``, ``0`` / ``3`` are the 3x3 convs (OIHW kernels) and ``1`` / ``4`` the
GroupNorms (``weight`` = scale). They map to the Flax tree ``{inc, down{i}, up{i}}/{conv1, norm1,
conv2, norm2}`` and ``outc``; kernels are transposed OIHW <-> HWIO, nothing else changes, so the
conversion is exact both ways.

File formats: ``.npz`` with one array per parameter under ``param/<reference name>`` (plain
``<reference name>`` keys are accepted too), read with ``allow_pickle=False``; and zip-format
PyTorch checkpoints (``.pth`` / ``.pt`` from ``torch.save``), read **without torch** by a
restricted unpickler that never runs code from the file (see :func:`load_reference_weights`).
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax.models import UNet

__all__ = [
    "infer_unet_config",
    "params_from_state_dict",
    "state_dict_from_params",
    "normalize_state_dict",
    "load_reference_weights",
    "save_reference_weights",
    "reference_names",
    "WeightsFileError",
]

# Position inside the reference's nn.Sequential double_conv -> (flax layer, kind).
_DOUBLE_CONV_LAYERS = (("0", "conv1", "conv"), ("1", "norm1", "norm"),
                       ("3", "conv2", "conv"), ("4", "norm2", "norm"))
# (torch suffix, flax leaf name) per layer kind.
_LEAVES = {"conv": (("weight", "kernel"), ("bias", "bias")),
           "norm": (("weight", "scale"), ("bias", "bias"))}


def _block_prefixes(depth: int) -> list[tuple[str, str]]:
    """(flax block name, torch prefix of its double_conv) in the reference order."""
    blocks = [("inc", "inc.double_conv")]
    blocks += [(f"down{i}", f"down{i}.maxpool_conv.1.double_conv") for i in range(1, depth + 1)]
    blocks += [(f"up{i}", f"up{i}.conv.double_conv") for i in range(1, depth + 1)]
    return blocks


def _name_map(depth: int) -> list[tuple[str, tuple[str, ...], bool]]:
    """[(torch name, flax path, is_conv_kernel)] for every parameter, in the reference order."""
    out = []
    for block, prefix in _block_prefixes(depth):
        for idx, layer, kind in _DOUBLE_CONV_LAYERS:
            for t_leaf, f_leaf in _LEAVES[kind]:
                out.append((f"{prefix}.{idx}.{t_leaf}", (block, layer, f_leaf),
                            kind == "conv" and t_leaf == "weight"))
    out.append(("outc.conv.weight", ("outc", "kernel"), True))
    out.append(("outc.conv.bias", ("outc", "bias"), False))
    return out


def reference_names(depth: int = 4) -> list[str]:
    """The reference state_dict's parameter names, in its order."""
    return [name for name, _, _ in _name_map(depth)]


def _infer_depth(names) -> int:
    depth = 0
    while any(n.startswith(f"down{depth + 1}.") for n in names):
        depth += 1
    return depth


def infer_unet_config(state_dict: Mapping[str, Any]) -> dict:
    """Reads ``width``, ``num_classes``, ``in_channels`` and ``depth`` off a reference state_dict.

    Returns:
      ``dict(width=..., num_classes=..., in_channels=..., depth=...)``.
    """
    for key in ("inc.double_conv.0.weight", "outc.conv.weight"):
        if key not in state_dict:
            raise KeyError(f"reference state_dict has no '{key}'; cannot infer the U-Net config")
        if np.ndim(state_dict[key]) != 4:
            raise ValueError(f"'{key}' must be a 4-D OIHW conv kernel, got shape "
                             f"{tuple(np.shape(state_dict[key]))}")
    inc = np.shape(state_dict["inc.double_conv.0.weight"])
    outc = np.shape(state_dict["outc.conv.weight"])
    depth = _infer_depth(state_dict.keys())
    if depth < 1:
        raise KeyError("reference state_dict has no 'down1.*' keys; cannot infer the depth")
    return dict(width=int(inc[0]), num_classes=int(outc[0]), in_channels=int(inc[1]),
                depth=depth)


def _expected_shapes(config: Mapping[str, int]) -> dict:
    """Flax param shapes of the UNet described by ``config`` (no computation)."""
    model = UNet(width=config["width"], num_classes=config["num_classes"], depth=config["depth"])
    side = 2 ** config["depth"]
    x = jax.ShapeDtypeStruct((1, side, side, config["in_channels"]), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def params_from_state_dict(state_dict: Mapping[str, Any], depth: int | None = 4) -> dict:
    """Converts a reference PyTorch U-Net ``state_dict`` into ``UNet`` params.

    Args:
      state_dict: reference name -> array (numpy arrays, or anything ``np.asarray`` accepts);
        conv kernels OIHW. Use :func:`normalize_state_dict` first for torch tensors, a
        ``{'state_dict': ...}`` wrapper or a ``module.`` prefix.
      depth: the number of Down/Up blocks (4 in the reference); None infers it from the keys.

    Returns:
      the Flax ``params`` dict, kernels HWIO, dtypes as given.

    Raises:
      KeyError: on a missing or an unexpected key (the message names it).
      ValueError: on a shape that does not fit the architecture (the message names the key).
    """
    names = set(state_dict.keys())
    if depth is None:
        depth = _infer_depth(names)
    mapping = _name_map(depth)
    expected_names = {name for name, _, _ in mapping}
    missing = [name for name, _, _ in mapping if name not in names]
    unexpected = sorted(names - expected_names)
    if missing:
        raise KeyError(f"reference state_dict (depth {depth}) is missing key '{missing[0]}'"
                       + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if unexpected:
        raise KeyError(f"unexpected key '{unexpected[0]}' in reference state_dict (depth {depth})"
                       + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
    config = infer_unet_config(state_dict)
    config["depth"] = depth
    shapes = _expected_shapes(config)

    params: dict = {}
    for name, path, is_kernel in mapping:
        value = np.asarray(state_dict[name])
        if is_kernel:
            if value.ndim != 4:
                raise ValueError(f"'{name}' must be a 4-D OIHW conv kernel, got shape "
                                 f"{value.shape}")
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        want = shapes
        for p in path:
            want = want[p]
        if tuple(value.shape) != tuple(want.shape):
            shown = (tuple(np.shape(state_dict[name])),
                     tuple(want.shape[i] for i in (3, 2, 0, 1)) if is_kernel else want.shape)
            raise ValueError(f"shape mismatch for '{name}': got {shown[0]}, expected "
                             f"{tuple(shown[1])} for a U-Net with width={config['width']}, "
                             f"in_channels={config['in_channels']}, "
                             f"num_classes={config['num_classes']}, depth={depth}")
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return params


def state_dict_from_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Converts ``UNet`` params into the reference PyTorch ``state_dict`` (numpy, OIHW kernels).

    The exact inverse of :func:`params_from_state_dict`; names are in the reference's order.
    """
    if "params" in params and "inc" not in params:
        params = params["params"]
    depth = 0
    while f"down{depth + 1}" in params:
        depth += 1
    mapping = _name_map(depth)
    used_blocks = {path[0] for _, path, _ in mapping}
    extra = sorted(set(params.keys()) - used_blocks)
    if extra:
        raise KeyError(f"unexpected block '{extra[0]}' in UNet params (depth {depth})")
    out: dict[str, np.ndarray] = {}
    for name, path, is_kernel in mapping:
        node = params
        for i, p in enumerate(path):
            if p not in node:
                raise KeyError(f"UNet params have no '{'/'.join(path[:i + 1])}' "
                               f"(needed for '{name}')")
            node = node[p]
        value = np.asarray(node)
        out[name] = np.transpose(value, (3, 2, 0, 1)) if is_kernel else value  # HWIO -> OIHW
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Unwraps ``{'state_dict': ...}``, strips a DataParallel ``module.`` prefix, and converts
    every value (numpy, jax or torch tensor) to a numpy array."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        key = str(key)
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = _to_numpy(value)
    return out


class WeightsFileError(ValueError):
    """A weights file is refused; ``path`` names the file and ``key`` the entry (or None)."""

    def __init__(self, message: str, path: str | os.PathLike, key: str | None = None):
        super().__init__(message)
        self.path = os.fspath(path)
        self.key = key


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz``, never unpickling (``allow_pickle=False``; object arrays refused)."""
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:  # e.g. a pickle file renamed .npz
        raise WeightsFileError(f"cannot read weights file '{path}': not an .npz of plain arrays "
                               f"({e}); pickled content is refused", path) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise WeightsFileError(f"cannot read weights file '{path}': {type(e).__name__}: {e}",
                               path) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise WeightsFileError(f"'{path}' is a single .npy array, not an .npz of named arrays",
                               path)
    out = {}
    with data:
        files = list(data.files)
        prefixed = any(k.startswith("param/") for k in files)
        for k in files:
            if prefixed and not k.startswith("param/"):
                continue
            name = k[len("param/"):] if prefixed else k
            try:
                out[name] = data[k]
            except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise WeightsFileError(f"'{path}': entry '{k}' holds pickled objects, which are "
                                       f"refused ({e})", path, name) from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise WeightsFileError(f"'{path}': entry '{k}' is unreadable: "
                                       f"{type(e).__name__}: {e}", path, name) from None
    return out


# ---------------------------------------------------------------------------------------------
# PyTorch zip checkpoints, read without torch and without running any code from the file.
#
# ``torch.save`` (torch >= 1.6) writes a zip: ``<archive>/data.pkl`` (a pickle of the object in
# which every tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
# and every storage a persistent id ``('storage', torch.FloatStorage, key, location, numel)``) and
# ``<archive>/data/<key>`` (the raw little-endian bytes of each storage). The unpickler below
# resolves only the few globals such a state_dict needs, to NumPy stand-ins; any other global
# (``os.system``, ``builtins.eval``, a model class ...) is refused before anything is called.

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_MAX_PICKLE_BYTES = 64 << 20
_MAX_STORAGE_BYTES = 2 << 30   # one tensor; the paper's U-Net (width 64) is 124 MB in all


class _Frozen:
    """Base of the stand-ins: no ``__dict__`` and no attribute setting, so a pickle's BUILD
    opcode cannot alter them (each load also gets fresh ones)."""

    __slots__ = ()

    def __setattr__(self, key, value):
        raise pickle.UnpicklingError(f"refused: setting attribute {key!r} of {self!r}")


class _StorageType(_Frozen):
    """Stand-in for ``torch.<X>Storage`` (only its dtype is used)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        dt = _TORCH_STORAGE_DTYPES[name]
        if dt == "bfloat16":
            import ml_dtypes  # noqa: PLC0415  (installed with jax)
            dt = ml_dtypes.bfloat16
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(dt))

    def __repr__(self):
        return f"torch.{self.name}"


class _Marker(_Frozen):
    """Stand-in for a class that is only ever passed around (``torch.Tensor``, ``Parameter``)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

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
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("a tensor without a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride))):
        raise pickle.UnpicklingError(f"bad tensor geometry offset={storage_offset!r} "
                                     f"size={size!r} stride={stride!r}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(f"tensor of size {size} (offset {storage_offset}, stride "
                                     f"{stride}) reaches past its storage of {storage.size} "
                                     "elements")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[st * storage.itemsize for st in stride],
                                           writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("a Parameter without tensor data")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not (isinstance(func, _Call) and func.fn is _rebuild_tensor_v2) \
            or not (isinstance(new_type, _Marker)
                    and new_type.name in ("torch.Tensor", "torch.nn.Parameter")) \
            or not isinstance(args, tuple):
        raise pickle.UnpicklingError("only plain tensors may be rebuilt")
    return func(*args)


def _safe_globals() -> dict:
    """The only globals a checkpoint may name, as fresh stand-ins (one set per load)."""
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
        ("torch._tensor", "_rebuild_from_type_v2"): _Call(_rebuild_from_type_v2),
        ("torch", "Tensor"): _Marker("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.Parameter"),
        **{("torch", name): _StorageType(name) for name in _TORCH_STORAGE_DTYPES},
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :func:`_safe_globals`; storages come from the zip, nothing else is
    reachable."""

    def __init__(self, file, path: str, storage_bytes):
        super().__init__(file)
        self._globals = _safe_globals()
        self._path = path
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
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
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
            pkls = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
            pkls = [n for n in pkls if n.count("/") <= 1]
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

            def storage_bytes(key: str, nbytes: int) -> bytes:
                name = f"{prefix}data/{key}"
                info = infos.get(name)
                if info is None:
                    raise pickle.UnpicklingError(f"storage record '{name}' is missing")
                if max(info.file_size, nbytes) > _MAX_STORAGE_BYTES:
                    raise pickle.UnpicklingError(f"storage record '{name}' is larger than "
                                                 f"{_MAX_STORAGE_BYTES >> 30} GiB")
                if info.file_size < nbytes:
                    raise pickle.UnpicklingError(f"storage record '{name}' holds "
                                                 f"{info.file_size} bytes, expected {nbytes}")
                return zf.read(name)[:nbytes]

            with zf.open(pkls[0]) as f:
                obj = _RestrictedUnpickler(f, path, storage_bytes).load()
    except WeightsFileError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError,
            TypeError, AttributeError, IndexError, KeyError, RecursionError) as e:
        raise WeightsFileError(f"refused weights file '{path}': {type(e).__name__}: {e}",
                               path) from None
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
            what = (f"dtype {value.dtype}" if isinstance(value, np.ndarray)
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


def load_reference_weights(path: str | os.PathLike, *, dtype: Any = jnp.float32
                           ) -> tuple[UNet, dict]:
    """Loads reference PyTorch U-Net weights from ``.npz``, ``.pth`` or ``.pt`` (no torch needed).

    The architecture (width, classes, input channels, depth) is inferred from the arrays.
    Nothing in the file is executed: ``.npz`` is read with ``allow_pickle=False``, and a torch
    checkpoint's pickle with an unpickler that resolves only tensor/storage/OrderedDict globals
    (to NumPy stand-ins) and refuses any other. Only finite float arrays under the reference
    names, with the shapes of one U-Net, are accepted.

    Args:
      path: ``.npz`` with ``param/<name>`` (or plain ``<name>``) keys, or a zip-format torch
        checkpoint (``torch.save``, torch >= 1.6) holding a state_dict (possibly as
        ``{'state_dict': ...}`` and/or with ``module.`` prefixes).
      dtype: the returned model's computation dtype (params are float32).

    Returns:
      ``(model, params)``: ``model.apply({'params': params}, x_nhwc)`` reproduces the reference.

    Raises:
      WeightsFileError (a ValueError): the file is unreadable, holds pickled objects or code, a
        non-float or non-finite array, or a missing/unexpected key or wrong shape; the message
        names the file and the key (``err.path``, ``err.key``).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".pth", ".pt"):
        raise WeightsFileError(f"unsupported weights file '{path}': expected .npz, .pth or .pt",
                               path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file '{path}' does not exist or is not a regular file",
                               path)
    raw: Mapping[str, Any] = _read_npz(path) if ext == ".npz" else _read_torch(path)
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    state_dict = normalize_state_dict(_check_arrays(raw, path))
    try:
        config = infer_unet_config(state_dict)
        params = params_from_state_dict(state_dict, depth=config["depth"])
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        key = next((k for k in sorted(state_dict, key=len, reverse=True) if f"'{k}'" in msg),
                   None)
        raise WeightsFileError(f"'{path}': {msg}", path, key) from None
    model = UNet(width=config["width"], num_classes=config["num_classes"],
                 depth=config["depth"], dtype=dtype)
    return model, params


def save_reference_weights(path: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Writes ``params`` as the reference state_dict to ``.npz`` under ``param/<name>`` keys."""
    state_dict = state_dict_from_params(params)
    np.savez(os.fspath(path), **{f"param/{k}": v for k, v in state_dict.items()})
