"""Federated data: the padded, masked per-client arrays the round consumes, and their sources."""

from fedmix_jax.data.federation import (  # noqa: F401
    BOX,
    IMAGE,
    LEVEL_NAMES,
    NONE,
    PIXEL,
    Federation,
    FederatedSplit,
    float_images,
    float_labels,
    level_from_name,
    stack_clients,
)
