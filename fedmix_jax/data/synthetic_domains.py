"""Acquisition domains and lesion types of the synthetic federation (:mod:`.synthetic`).

A :class:`Domain` is one client's look (pixel-scale fields in px at 64 x 64); :func:`client_domain`
gives client ``c`` the presets :data:`DEFAULT_DOMAINS`, then seeded perturbed copies. A
:class:`LesionType` sets the ranges of a lesion's shape and scales the domain's texture, core,
contrast and size; ``lesion_types(K)`` gives the K types and class names of a K-class federation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedmix_jax.data.boxes import sample_rng


@dataclasses.dataclass(frozen=True)
class Domain:
    """Acquisition domain of one client. Pixel-scale fields are in px at 64 x 64."""

    name: str
    bg_level: float        # mean background (skin) intensity
    bg_texture: float      # amplitude of the skin texture
    texture_scale: float   # coarse texture correlation length, fraction of the image size
    gradient: float        # illumination gradient amplitude across the image
    vignette: float        # darkening at the corners
    lesion_contrast: float  # mean darkening of a lesion relative to the skin
    lesion_texture: float  # amplitude of the texture inside lesions
    core: float            # extra darkening toward a lesion's centre (fraction of the contrast)
    edge: float            # width of the lesion's soft rim, px
    blur: float            # optical blur sigma, px
    noise: float           # additive Gaussian noise std
    speckle: float         # multiplicative speckle std
    hairs: float           # mean number of hairs per image
    gamma: float           # intensity ** gamma (> 1 darkens mid-tones)
    gain: float
    offset: float
    size: float            # lesion size multiplier


DEFAULT_DOMAINS = (
    Domain("site_a_dim", bg_level=0.50, bg_texture=0.05, texture_scale=0.12, gradient=0.16,
           vignette=0.30, lesion_contrast=0.17, lesion_texture=0.04, core=0.35, edge=1.4,
           blur=0.8, noise=0.025, speckle=0.0, hairs=0.0, gamma=1.45, gain=0.95, offset=0.0,
           size=1.0),
    Domain("site_b_hairy", bg_level=0.70, bg_texture=0.09, texture_scale=0.05, gradient=0.06,
           vignette=0.05, lesion_contrast=0.30, lesion_texture=0.11, core=0.45, edge=0.6,
           blur=0.0, noise=0.06, speckle=0.0, hairs=3.0, gamma=1.0, gain=1.0, offset=0.0,
           size=0.9),
    Domain("site_c_clean", bg_level=0.62, bg_texture=0.035, texture_scale=0.10, gradient=0.05,
           vignette=0.08, lesion_contrast=0.34, lesion_texture=0.04, core=0.30, edge=0.8,
           blur=0.5, noise=0.015, speckle=0.0, hairs=0.3, gamma=1.0, gain=1.0, offset=0.0,
           size=1.0),
    Domain("site_d_bright", bg_level=0.72, bg_texture=0.05, texture_scale=0.16, gradient=0.12,
           vignette=0.0, lesion_contrast=0.26, lesion_texture=0.10, core=0.15, edge=1.6,
           blur=1.5, noise=0.025, speckle=0.07, hairs=0.0, gamma=0.75, gain=1.05, offset=-0.03,
           size=1.15),
)


@dataclasses.dataclass(frozen=True)
class LesionType:
    name: str
    irregularity: tuple[float, float]  # range of the harmonic amplitude budget
    eccentricity: tuple[float, float]  # axis ratio range
    jag: tuple[float, float]           # rim jaggedness range
    texture: float                     # multiplier of the domain's lesion texture
    core: float                        # added to the domain's core darkening
    contrast: float                    # multiplier of the domain's lesion contrast
    size: float                        # radius multiplier


# Multi-class lesion types (K > 1), distinguished by shape and texture. Types 4-7 are smaller
# variants of types 0-3.
LESION_TYPES = (
    LesionType("nodular", (0.02, 0.08), (1.0, 1.2), (0.01, 0.03), 0.5, 0.45, 1.15, 1.0),
    LesionType("irregular", (0.18, 0.30), (1.0, 1.4), (0.08, 0.14), 2.2, 0.0, 0.9, 1.0),
    LesionType("elongated", (0.02, 0.08), (1.9, 2.6), (0.01, 0.04), 1.0, 0.2, 1.0, 0.95),
    LesionType("ring", (0.03, 0.10), (1.0, 1.3), (0.02, 0.05), 0.8, -0.8, 1.3, 1.0),
)
_BINARY_TYPE = LesionType("lesion", (0.03, 0.26), (1.0, 1.6), (0.02, 0.10), 1.0, 0.0, 1.0, 1.0)


def lesion_types(num_classes: int) -> tuple[list[LesionType], list[str]]:
    """The K lesion types and class names of a K-class federation (K = 1: one binary type)."""
    if num_classes == 1:
        return [_BINARY_TYPE], ["lesion"]
    if not 1 <= num_classes <= 2 * len(LESION_TYPES):
        raise ValueError(f"num_classes must be in [1, {2 * len(LESION_TYPES)}], got {num_classes}")
    types, names = [], []
    for k in range(num_classes):
        t = LESION_TYPES[k % len(LESION_TYPES)]
        if k >= len(LESION_TYPES):
            t = dataclasses.replace(t, name="small_" + t.name, size=0.6 * t.size)
        types.append(t)
        names.append(t.name)
    return types, names


def client_domain(client: int) -> Domain:
    """Domain of client ``client``: the four presets, then perturbed copies of them."""
    base = DEFAULT_DOMAINS[client % len(DEFAULT_DOMAINS)]
    if client < len(DEFAULT_DOMAINS):
        return base
    u = sample_rng(7919, client).uniform(-1.0, 1.0, size=8)
    return dataclasses.replace(
        base,
        name=f"site_{chr(ord('a') + client % 26)}{client // 26 or ''}_{base.name.split('_', 2)[-1]}",
        bg_level=float(np.clip(base.bg_level + 0.08 * u[0], 0.35, 0.85)),
        gradient=float(max(0.0, base.gradient + 0.05 * u[1])),
        lesion_contrast=float(max(0.12, base.lesion_contrast + 0.05 * u[2])),
        blur=float(max(0.0, base.blur + 0.4 * u[3])),
        noise=float(max(0.005, base.noise * (1 + 0.4 * u[4]))),
        gamma=float(base.gamma * (1 + 0.15 * u[5])),
        edge=float(max(0.4, base.edge * (1 + 0.3 * u[6]))),
        size=float(base.size * (1 + 0.1 * u[7])),
    )
