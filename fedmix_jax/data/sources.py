"""One entry point for every data source: ``load_federation(config.data) -> Federation``.

``config.data.name`` is ``synthetic`` or a real dataset (:mod:`fedmix_jax.data.real`); a missing
download raises ``DatasetNotFoundError``, an unusable file ``BadInputError`` (both ``ValueError``),
an unknown name ``ValueError``. Details: docs/data_faults.md.
"""

from __future__ import annotations

from fedmix_jax.data.federation import Federation

SYNTHETIC = "synthetic"
REAL = ("ham10000", "breast", "folders", "retouch")


def load_federation(data_config, verbose: bool = True) -> Federation:
    """Build the :class:`Federation` described by a ``data`` ConfigDict (see the configs/)."""
    name = str(data_config.get("name", SYNTHETIC)).strip().lower()
    if name == SYNTHETIC:
        from fedmix_jax.data.synthetic import synthetic_federation_from_config

        return synthetic_federation_from_config(data_config)
    if name in REAL:
        # Imported lazily: the real loaders import tensorflow_datasets (TF-free, but not instant).
        from fedmix_jax.data.real import load_federation_from_config

        return load_federation_from_config(data_config, verbose=verbose)
    raise ValueError(f"unknown data source --config.data.name={name!r}; choose one of "
                     f"{', '.join((SYNTHETIC,) + REAL)}")
