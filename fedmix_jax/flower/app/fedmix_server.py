"""The ServerApp component."""

from fedmix_jax.flower import server_app

serverapp = server_app.app
