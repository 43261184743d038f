"""FedMix across sites on Flower (``pip install -e '.[flower]'``): one more backend of the round.

:mod:`~fedmix_jax.flower.client_app` is the ClientApp a hospital's SuperNode runs (the site
function on its own data), :mod:`~fedmix_jax.flower.server_app` the coordinator's ServerApp,
:mod:`~fedmix_jax.flower.strategy` :class:`FedMixStrategy` (weights, aggregation of both
models), :mod:`~fedmix_jax.flower.validation` the checks every reply passes,
:mod:`~fedmix_jax.flower.supernode` Flower's SuperNode with capped waits
(``--clientapp-in-process``: the ClientApp inside it) and :mod:`~fedmix_jax.flower.simulation`
everything in one process (tests, demos). See docs/across_sites.md. Set
``FLWR_TELEMETRY_ENABLED=0`` (Flower's telemetry is on by default).
"""
