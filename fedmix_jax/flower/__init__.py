"""FedMix across sites on Flower (``pip install -e '.[flower]'``): one more backend of the round.

client_app (a hospital's ClientApp), server_app, strategy (:class:`FedMixStrategy`), validation
(checks of every reply), supernode, simulation (all in one process). Set
``FLWR_TELEMETRY_ENABLED=0``. Details: docs/across_sites.md.
"""
