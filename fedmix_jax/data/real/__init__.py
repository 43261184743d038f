"""Real datasets for FedMix, read from their published layouts, cached with TFDS (TensorFlow-free).

Supported (``--config.data.name``):

* ``ham10000``: HAM10000 with the Tschandl lesion masks; 4 clients by acquisition source.
* ``breast``: breast ultrasound, BUSI + BUSIS + UDIAT Dataset B, one client each.
* ``folders``: your own data, one folder per client (``images/``, ``masks/``, optional CSVs).

Nothing is downloaded: point ``--config.data.data_dir`` at the manually downloaded files (the
expected trees are in :mod:`.layouts` and in the :class:`DatasetNotFoundError` message). The first
use decodes and resizes everything once into ``array_record`` files under ``cache_dir``
(``~/fedmix_data``) with a TFDS builder (:mod:`.builders`); later runs read those records with
``tfds.data_source``. TensorFlow is never imported.

From Python::

    from fedmix_jax.data.real import default_data_config, load_federation_from_config
    cfg = default_data_config("ham10000", data_dir="/data/HAM10000", image_size=64)
    fed = load_federation_from_config(cfg)      # builds on first use, then reads the cache
    print(fed.summary())

From a shell (build only, e.g. on a login node; same code path)::

    python -m fedmix_jax.data.real.build --dataset ham10000 --manual_dir /data/HAM10000 \\
        --cache_dir ~/fedmix_data --image_size 64

Bad input (``on_bad_input``: ``'fail'`` default, or ``'skip'`` to log, count and skip each bad
file): see :mod:`.errors`, :mod:`.imaging` (mask rules), :mod:`.files` (special files, links) and
:mod:`.layouts`; the full list of what is skipped and what is an error is in
``docs/data_faults.md``.
"""

from fedmix_jax.data.real.builders import (  # noqa: F401
    BUILDERS,
    BreastUsFedmix,
    FedMixConfig,
    FolderFederation,
    Ham10000Fedmix,
    make_config,
)
from fedmix_jax.data.real.errors import (  # noqa: F401
    BadInputError,
    CacheDamagedError,
    DatasetNotFoundError,
)
from fedmix_jax.data.real.cache import (  # noqa: F401
    PreparedDataset,
    prepare_dataset,
    validate_cache,
)
from fedmix_jax.data.real.settings import DEFAULT_CACHE_DIR, RealDataSettings  # noqa: F401
from fedmix_jax.data.real.loader import (  # noqa: F401
    default_data_config,
    load_federation_from_config,
    read_client_split,
)

from fedmix_jax.data.real import retouch  # noqa: E402,F401  -- registers name "retouch"

build_dataset = prepare_dataset

__all__ = [
    "BUILDERS", "BadInputError", "BreastUsFedmix", "CacheDamagedError", "DEFAULT_CACHE_DIR",
    "DatasetNotFoundError",
    "FedMixConfig", "FolderFederation", "Ham10000Fedmix", "PreparedDataset", "build_dataset",
    "default_data_config", "load_federation_from_config", "make_config", "prepare_dataset",
    "read_client_split", "validate_cache", "RealDataSettings",
]
