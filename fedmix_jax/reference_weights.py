"""Reference PyTorch U-Net ``state_dict`` <-> :class:`~fedmix_jax.models.UNet` params, exact both
ways (OIHW <-> HWIO kernels), and :func:`load_reference_weights` / :func:`save_reference_weights`
(files read by :mod:`fedmix_jax.weights_files`, never running code from them). The name map:
docs/api.md ("Reference weights").
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fedmix_jax.models import UNet
from fedmix_jax.weights_files import WeightsFileError, read_weights_file

__all__ = ["params_from_state_dict", "state_dict_from_params", "load_reference_weights",
           "save_reference_weights", "WeightsFileError"]

# Position inside the reference's nn.Sequential double_conv -> (flax layer, kind).
_DOUBLE_CONV_LAYERS = (("0", "conv1", "conv"), ("1", "norm1", "norm"),
                       ("3", "conv2", "conv"), ("4", "norm2", "norm"))
# (torch suffix, flax leaf name) per layer kind.
_LEAVES = {"conv": (("weight", "kernel"), ("bias", "bias")),
           "norm": (("weight", "scale"), ("bias", "bias"))}


def _name_map(depth: int) -> list[tuple[str, tuple[str, ...], bool]]:
    """[(torch name, flax path, is_conv_kernel)] for every parameter, in the reference order."""
    blocks = [("inc", "inc.double_conv")]   # (flax block, torch prefix of its double_conv)
    blocks += [(f"down{i}", f"down{i}.maxpool_conv.1.double_conv") for i in range(1, depth + 1)]
    blocks += [(f"up{i}", f"up{i}.conv.double_conv") for i in range(1, depth + 1)]
    out = [(f"{prefix}.{idx}.{torch}", (block, layer, flax), kind == "conv" and torch == "weight")
           for block, prefix in blocks for idx, layer, kind in _DOUBLE_CONV_LAYERS
           for torch, flax in _LEAVES[kind]]
    return out + [("outc.conv.weight", ("outc", "kernel"), True),
                  ("outc.conv.bias", ("outc", "bias"), False)]


def reference_names(depth: int = 4) -> list[str]:
    """The reference state_dict's parameter names, in its order."""
    return [name for name, _, _ in _name_map(depth)]


def _infer_depth(names) -> int:
    depth = 0
    while any(n.startswith(f"down{depth + 1}.") for n in names):
        depth += 1
    return depth


def infer_unet_config(state_dict: Mapping[str, Any]) -> dict:
    """``dict(width=, num_classes=, in_channels=, depth=)`` read off a reference state_dict."""
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
    return dict(width=int(inc[0]), num_classes=int(outc[0]), in_channels=int(inc[1]), depth=depth)


def params_from_state_dict(state_dict: Mapping[str, Any], depth: int | None = 4) -> dict:
    """The Flax ``params`` (kernels HWIO, dtypes as given) of a reference ``state_dict`` (name ->
    array, kernels OIHW; :func:`normalize_state_dict` first for torch tensors, a wrapper or a
    ``module.`` prefix); ``depth``: Down/Up blocks (4 in the reference; None: from the keys). Raises
    KeyError (a missing or unexpected key) or ValueError (a shape that does not fit the
    architecture), naming the key."""
    names = set(state_dict.keys())
    depth = _infer_depth(names) if depth is None else depth
    mapping = _name_map(depth)
    missing = [name for name, _, _ in mapping if name not in names]
    unexpected = sorted(names - {name for name, _, _ in mapping})
    if missing:
        raise KeyError(f"reference state_dict (depth {depth}) is missing key '{missing[0]}'"
                       + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if unexpected:
        raise KeyError(f"unexpected key '{unexpected[0]}' in reference state_dict (depth {depth})"
                       + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
    config = infer_unet_config(state_dict)
    model = UNet(width=config["width"], num_classes=config["num_classes"], depth=depth)
    x = jax.ShapeDtypeStruct((1, 2 ** depth, 2 ** depth, config["in_channels"]), jnp.float32)
    shapes = traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.key(0), x)["params"])
    flat = {}
    for name, path, is_kernel in mapping:
        value = np.asarray(state_dict[name])
        if is_kernel:
            if value.ndim != 4:
                raise ValueError(f"'{name}' must be a 4-D OIHW conv kernel, got shape "
                                 f"{value.shape}")
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        want = shapes[path].shape
        if tuple(value.shape) != tuple(want):
            shown = (tuple(np.shape(state_dict[name])),
                     tuple(want[i] for i in (3, 2, 0, 1)) if is_kernel else want)
            raise ValueError(f"shape mismatch for '{name}': got {shown[0]}, expected "
                             f"{tuple(shown[1])} for a U-Net with width={config['width']}, "
                             f"in_channels={config['in_channels']}, "
                             f"num_classes={config['num_classes']}, depth={depth}")
        flat[path] = value
    return traverse_util.unflatten_dict(flat)


def state_dict_from_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The reference ``state_dict`` (numpy, OIHW kernels, the reference's order) of ``UNet``
    params: the exact inverse of :func:`params_from_state_dict`."""
    if "params" in params and "inc" not in params:
        params = params["params"]
    depth = _infer_depth([f"{block}." for block in params])
    mapping = _name_map(depth)
    extra = sorted(set(params.keys()) - {path[0] for _, path, _ in mapping})
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


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Unwraps ``{'state_dict': ...}``, strips a DataParallel ``module.`` prefix, and converts
    every value (numpy, jax or torch tensor) to a numpy array."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # torch.Tensor, without importing torch
            value = value.detach().cpu().numpy()
        out[str(key).removeprefix("module.")] = np.asarray(value)
    return out


def load_reference_weights(path: str | os.PathLike, *, dtype: Any = jnp.float32
                           ) -> tuple[UNet, dict]:
    """``(model, params)`` of reference U-Net weights in ``path`` (``.npz`` with ``param/<name>`` or
    ``<name>`` keys, or a zip-format ``torch.save`` state_dict, maybe wrapped or with ``module.``
    prefixes; no torch needed); ``model.apply({'params': params}, x_nhwc)`` reproduces the
    reference. The architecture is inferred; params float32, ``dtype`` the model's computation
    dtype. Raises WeightsFileError (a ValueError; ``err.path``, ``err.key``): unreadable, pickled
    objects or code, a non-float or non-finite array, a missing/unexpected key or wrong shape."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in (".npz", ".pth", ".pt"):
        raise WeightsFileError(f"unsupported weights file '{path}': expected .npz, .pth or .pt",
                               path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file '{path}' does not exist or is not a regular file",
                               path)
    state_dict = normalize_state_dict(read_weights_file(path))
    try:
        config = infer_unet_config(state_dict)
        params = params_from_state_dict(state_dict, depth=config["depth"])
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        key = next((k for k in sorted(state_dict, key=len, reverse=True) if f"'{k}'" in msg), None)
        raise WeightsFileError(f"'{path}': {msg}", path, key) from None
    return UNet(width=config["width"], num_classes=config["num_classes"], depth=config["depth"],
                dtype=dtype), params


def save_reference_weights(path: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Writes ``params`` as the reference state_dict to ``.npz`` under ``param/<name>`` keys."""
    state_dict = state_dict_from_params(params)
    np.savez(os.fspath(path), **{f"param/{k}": v for k, v in state_dict.items()})
