"""``config.data`` of a real dataset, typed and read once: :class:`RealDataSettings`, every
default written here once (:func:`~fedmix_jax.data.real.default_data_config` builds its
ConfigDict from these). Details: docs/architecture.md, docs/main_job.md.
"""

from __future__ import annotations

import dataclasses
import os

DEFAULT_CACHE_DIR = "~/fedmix_data"


@dataclasses.dataclass(frozen=True)
class RealDataSettings:
    """The real-data fields of ``config.data`` (see docs/main_job.md for each)."""

    name: str = "ham10000"
    data_dir: str = ""                 # as given; :attr:`source_dir` is its absolute path
    cache_dir: str = DEFAULT_CACHE_DIR
    image_size: int = 256
    channels: int = 1
    clients: tuple[str, ...] = ()      # empty: every client of the cache
    levels: tuple[str, ...] | str = ()  # one per client, one name for all, or empty: defaults
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    on_bad_input: str = "fail"
    max_per_client: int = 0
    rebuild: bool = False
    box_mode: str = "component"
    pack_labels: bool = False
    drop_empty_slices: bool = False

    @classmethod
    def from_config(cls, data_cfg) -> "RealDataSettings":
        """The settings of a ``data`` ConfigDict, dict or object (settings pass through); unset or
        ``None`` fields take the default, fields of other groups (``data.compact``) are ignored."""
        if isinstance(data_cfg, cls):
            return data_cfg
        get = getattr(data_cfg, "get", lambda name, default: getattr(data_cfg, name, default))
        return cls(**{f.name: _typed(f.name, v, f.default) for f in dataclasses.fields(cls)
                      if (v := get(f.name, None)) is not None})

    @property
    def source_dir(self) -> str:
        """The absolute ``data_dir`` ("" when none is given)."""
        d = str(self.data_dir).strip()
        return os.path.abspath(os.path.expanduser(d)) if d else ""

    @property
    def cache_root(self) -> str:
        """The absolute ``cache_dir``."""
        return os.path.abspath(os.path.expanduser(str(self.cache_dir)))


def _typed(name: str, value, default):
    """``value`` as the field's type (a single ``levels`` name stays a string: every client's)."""
    if name in ("clients", "levels"):
        if isinstance(value, str):
            return value if name == "levels" else ((value,) if value else ())
        return tuple(str(x) for x in value)
    return type(default)(value)
