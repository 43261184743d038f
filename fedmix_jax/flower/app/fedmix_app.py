"""The Flower components of fedmix_jax (see fedmix_jax/flower and docs/across_sites.md)."""

from fedmix_jax.flower import client_app as _client_app
from fedmix_jax.flower import server_app as _server_app

clientapp = _client_app.app
serverapp = _server_app.app
