"""The ClientApp component (no JAX import: a site worker does the computing)."""

from fedmix_jax.flower import client_app as _client_app

clientapp = _client_app.app
