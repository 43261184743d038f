"""Every config value range-checked before anything is loaded (one table, one error line).

:func:`check_config_values` (the job's first step) raises a ``ConfigError`` naming a missing or
out-of-range field, or a model too large for this machine's memory; :func:`check_num_devices`
refuses more devices than JAX has. Details: docs/data_faults.md.
"""

from __future__ import annotations

import math
import os

import jax

from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.errors import ConfigError
from fedmix_jax.models import unet_channels

BIG = 10 ** 7

# (field, kind, low, high, required). kind: "int", "float", "ints" (int or tuple of ints),
# "opt_int" / "opt_float" (None allowed), "str".
TABLE = (
    ("seed", "int", 0, 2 ** 32 - 1, True),
    ("strategy", "str", None, None, True),
    ("num_rounds", "int", 1, BIG, True),
    ("eval_every", "int", 1, BIG, True),
    ("checkpoint_every", "int", 1, BIG, True),
    ("keep_checkpoints", "int", 1, BIG, True),
    ("model.width", "int", 1, 1 << 16, True),
    ("model.depth", "int", 1, 8, True),
    ("data.name", "str", None, None, True),
    ("data.image_size", "int", 16, 4096, True),
    ("data.num_clients", "int", 1, 1024, False),
    ("data.train_sizes", "ints", 0, 10 ** 6, False),
    ("data.val_size", "ints", 1, 10 ** 6, False),
    ("data.test_size", "ints", 1, 10 ** 6, False),
    ("data.num_classes", "int", 1, 8, False),
    ("data.seed", "int", 0, 2 ** 32 - 1, False),
    ("data.channels", "int", 1, 3, False),
    ("data.lesion_free_fraction", "float", 0.0, 1.0, False),
    ("data.val_fraction", "float", 0.0, 0.99, False),
    ("data.test_fraction", "float", 0.0, 0.99, False),
    ("data.stream_block_steps", "int", 1, 10 ** 6, False),
    ("data.device_data_budget_gb", "opt_float", 1e-12, 1e9, False),
    ("train.batch_size", "int", 1, 10 ** 5, True),
    ("train.inference_chunk", "int", 1, 10 ** 5, False),
    ("train.client_group", "int", 0, 1024, False),
    ("train.num_devices", "opt_int", 1, 1 << 16, False),
    ("train.cpu_devices", "opt_int", 0, 1024, False),
    ("train.warmup_rounds", "opt_int", 0, BIG, False),
)


def _get(config, field: str):
    """(present, value) of the dotted ``field`` in ``config``."""
    node = config
    for part in field.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False, None
    return True, node


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or type(v).__name__.startswith("int")


def _check(field: str, kind: str, lo, hi, value) -> str | None:
    """Why ``value`` is not acceptable for ``field``, or None."""
    if value is None and kind.startswith("opt_"):
        return None
    kind = kind.removeprefix("opt_")
    if kind == "str":
        return None if isinstance(value, str) and value else "a non-empty string"
    if kind in ("int", "ints"):
        values = list(value) if kind == "ints" and isinstance(value, (tuple, list)) else [value]
        if values and all(_is_int(v) and lo <= int(v) <= hi for v in values):
            return None
        return f"an integer{' (or one per client)' if kind == 'ints' else ''} in [{lo}, {hi}]"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(float(value)) and lo <= float(value) <= hi
    nullable = " or None (no budget)" if field.endswith("budget_gb") else ""
    return None if ok else f"a finite number in [{lo:g}, {hi:g}]{nullable}"


def unet_param_count(width: int, depth: int, in_channels: int = 3, num_classes: int = 8) -> int:
    """Parameters of :class:`fedmix_jax.models.UNet` (exact; from :func:`unet_channels`)."""
    def double(cin, mid, out):   # two 3x3 convs with bias, each followed by GroupNorm
        return 9 * cin * mid + 3 * mid + 9 * mid * out + 3 * out

    enc, dec = unet_channels(width, depth)
    n = double(in_channels, enc[0], enc[0])
    n += sum(double(enc[i - 1], enc[i], enc[i]) for i in range(1, depth + 1))
    prev = enc[depth]
    for j in range(1, depth + 1):
        cin = prev + enc[depth - j]
        n += double(cin, cin // 2, dec[j - 1])
        prev = dec[j - 1]
    return n + dec[-1] * num_classes + num_classes


def check_model_fits(config) -> None:
    """Refuse a model whose federated state alone (per client: two models' params and their two
    Adam moments; the global pair and the best params) exceeds the machine's memory."""
    width, depth, data = int(config.model.width), int(config.model.depth), config.data
    params = unet_param_count(width, depth)
    sized = [data[k] for k in ("clients", "train_sizes")
             if k in data and isinstance(data[k], (tuple, list)) and data[k]]
    copies = 6 * (len(sized[0]) if sized else int(data.get("num_clients", 4) or 4)) + 3
    need = params * 4 * copies
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        have = None
    if have and need > have:
        raise ConfigError(
            f"--config.model.width={width} (depth {depth}) gives a U-Net of {params:,} "
            f"parameters; the federated state alone ({copies} copies in float32) needs "
            f"{need / 2**30:,.0f} GiB, more than this machine's {have / 2**30:,.0f} GiB of "
            "memory: choose a smaller --config.model.width")


def check_config_values(config) -> None:
    """Raise :class:`ConfigError` naming the first missing or out-of-range field (:data:`TABLE`)."""
    for group in ("model", "data", "train"):
        if group not in config:
            raise ConfigError(f"the config has no '{group}' group: the config file must define "
                              f"config.{group} (see configs/synthetic.py)")
    for field, kind, lo, hi, required in TABLE:
        present, value = _get(config, field)
        if not present:
            if required:
                raise ConfigError(f"the config has no field '{field}': add it to the config "
                                  "file (see configs/synthetic.py)")
            continue
        why = _check(field, kind, lo, hi, value)
        if not why and field == "model.width" and int(value) % 2:
            why = "an even integer (GroupNorm uses width/2 groups)"
        if why:
            raise ConfigError(f"--config.{field}={value!r}: must be {why}")
    check_model_fits(config)
    build_round_config(config)      # their own checks, early
    build_model(config, 1)


def check_num_devices(config) -> None:
    """Refuse ``train.num_devices`` above the number of devices JAX has."""
    wanted = config.train.get("num_devices", None)
    if wanted is not None and int(wanted) > (have := jax.device_count()):
        raise ConfigError(f"--config.train.num_devices={wanted}, but JAX has {have} "
                          f"{jax.default_backend()} device(s): use at most {have} (or None for "
                          "all); on a CPU, --config.train.cpu_devices=0 gives one device per core")
