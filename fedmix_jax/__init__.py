"""fedmix_jax: FedMix (mixed-supervision federated segmentation) in JAX/Flax."""

__version__ = "0.1.0"
