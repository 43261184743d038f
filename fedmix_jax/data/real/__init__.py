"""Real datasets (``--config.data.name``: ``ham10000``, ``breast``, ``folders``, ``retouch``),
read from the manual download (``data_dir``; nothing is downloaded) and cached once as TFDS
``array_record`` files (TensorFlow-free). Details: docs/data.md, docs/data_faults.md.
"""

from fedmix_jax.data.real.builders import (BUILDERS, BreastUsFedmix, FedMixConfig, FolderFederation,
                                           Ham10000Fedmix, make_config)
from fedmix_jax.data.real.cache import PreparedDataset, prepare_dataset, validate_cache
from fedmix_jax.data.real.errors import BadInputError, CacheDamagedError, DatasetNotFoundError
from fedmix_jax.data.real.loader import (default_data_config, load_federation_from_config,
                                         read_client_split)
from fedmix_jax.data.real.retouch import RetouchFedmix
from fedmix_jax.data.real.settings import DEFAULT_CACHE_DIR, RealDataSettings

BUILDERS["retouch"] = RetouchFedmix   # --config.data.name=retouch (any import of the package)
build_dataset = prepare_dataset

__all__ = [
    "BUILDERS", "BadInputError", "BreastUsFedmix", "CacheDamagedError", "DEFAULT_CACHE_DIR",
    "DatasetNotFoundError", "FedMixConfig", "FolderFederation", "Ham10000Fedmix",
    "PreparedDataset", "build_dataset", "default_data_config", "load_federation_from_config",
    "make_config", "prepare_dataset", "read_client_split", "validate_cache", "RealDataSettings",
]
