"""FedMix across sites on Flower (``pip install -e '.[flower]'``): one more backend of the round.

* :mod:`~fedmix_jax.flower.client_app` — the ClientApp a hospital's SuperNode runs: the project's
  site function on the site's own data; replies with its model pair and the weights' scalars;
* :mod:`~fedmix_jax.flower.server_app` — the coordinator's ServerApp: sites, rounds, checkpoints
  and resume, ``metrics.jsonl`` / ``summary.json`` as the main job;
* :mod:`~fedmix_jax.flower.strategy` — :class:`FedMixStrategy`, a Flower strategy over the
  project's strategy registry (weights, aggregation of both models);
* :mod:`~fedmix_jax.flower.validation` — the checks every reply passes before aggregation;
* :mod:`~fedmix_jax.flower.array_records` — pytrees <-> Flower records (numpy arrays and scalars only);
* :mod:`~fedmix_jax.flower.supernode` — Flower's SuperNode with capped waits; with
  ``--clientapp-in-process`` the ClientApp runs inside it
  (:mod:`~fedmix_jax.flower.in_process_runtime`: no recompilation per round under the deployment
  engine);
* :mod:`~fedmix_jax.flower.simulation` — ServerApp and ClientApps in one process (tests, demos).

See docs/across_sites.md for the runbook. Set ``FLWR_TELEMETRY_ENABLED=0`` (Flower's telemetry
is on by default).
"""
