"""The ServerApp component."""

from fedmix_jax.flower import server_app as _server_app

serverapp = _server_app.app
