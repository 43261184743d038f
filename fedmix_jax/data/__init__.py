"""Federated data: the padded, masked per-client arrays the round consumes, and their sources."""

from fedmix_jax.data.federation import (BOX, IMAGE, LEVEL_NAMES, NONE, PIXEL, Federation,
                                        FederatedSplit, float_images, float_labels, labels_packed,
                                        level_from_name, pack_federation_labels, pack_split_labels,
                                        stack_clients, unpack_split_labels)

__all__ = ["BOX", "IMAGE", "LEVEL_NAMES", "NONE", "PIXEL", "Federation", "FederatedSplit",
           "float_images", "float_labels", "labels_packed", "level_from_name",
           "pack_federation_labels", "pack_split_labels", "stack_clients", "unpack_split_labels"]
