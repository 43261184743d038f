"""The ClientApp component that ``flwr run`` names (no JAX at import: the ClientApp loads JAX
with a site's data, at its first message)."""

from fedmix_jax.flower import client_app

clientapp = client_app.app
