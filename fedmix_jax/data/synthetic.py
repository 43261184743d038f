"""The embedded synthetic federation: dermoscopy-like lesions from four acquisition domains.

This is the default demo data set; it needs no download and builds in a fraction of a second.
Each client is a "hospital" with its own acquisition domain (non-IID): brightness and gamma,
illumination gradient and vignetting, skin texture, lesion contrast and texture, edge softness,
optical blur, sensor noise, speckle and hairs. Lesions are dark blobs with irregular boundaries,
r(theta) = r0 * (1 + sum_k a_k cos(k theta + phi_k)) on a rotated ellipse, with a jagged rim from
smoothed noise, a darker core and internal texture; sometimes two (or, multi-class, up to three)
lesions; a fraction of images is lesion-free (empty mask, image label 0).

Default domains (``site_c`` is the small pixel-labelled client, levels ``[B, B, L, B]`` as the
paper's skin setting):

=====================  =======================================================================
client                 look
=====================  =======================================================================
``site_a_dim``         dark, high gamma, strong vignette and gradient, low lesion contrast, soft
                       edges, slight blur
``site_b_hairy``       bright, fine coarse-grained skin texture, several dark hairs per image,
                       strong sensor noise, sharp, highly textured lesions
``site_c_clean``       mid-grey, clean, little noise and texture, well-contrasted lesions
``site_d_bright``      over-exposed (low gamma, gain > 1), strong blur, speckle, large pale
                       mottled lesions
=====================  =======================================================================

More clients cycle through these four with deterministic per-client perturbations.

Determinism: every sample is drawn from its own generator seeded by
``(seed, client, split, index, stream)`` (:func:`fedmix_jax.data.boxes.sample_rng`), so a sample
does not change when other splits or clients change size; train / val / test are disjoint draws.
Box margins (1-9 px, as in the reference) come from a separate per-sample stream and are drawn
once. Pixel-scale parameters (edge width, blur, hair width) are given for 64 px and scale with
``image_size``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from fedmix_jax.data.boxes import box_masks_from_masks, check_box_mode, sample_rng
from fedmix_jax.data.federation import (Federation, FederatedSplit, level_from_name,
                                        stack_clients)

__all__ = [
    "Domain",
    "DEFAULT_DOMAINS",
    "LESION_TYPES",
    "client_domain",
    "make_synthetic_federation",
    "synthetic_federation_from_config",
    "preview_grid",
]

_DEFAULT_TRAIN_SIZES = (96, 128, 24, 112)
_DEFAULT_LEVELS = ("box", "box", "pixel", "box")
_SPLITS = {"train": 0, "val": 1, "test": 2}
_STREAM_IMAGE, _STREAM_BOX, _STREAM_LESION_FREE = 0, 1, 2
_MAX_LESIONS = 3
_MAX_HAIRS = 6
_NUM_UNIFORMS = 128
_NUM_FIELDS = 5  # coarse skin, fine skin, lesion texture, sensor noise, speckle


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
class _LesionType:
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
    _LesionType("nodular", (0.02, 0.08), (1.0, 1.2), (0.01, 0.03), 0.5, 0.45, 1.15, 1.0),
    _LesionType("irregular", (0.18, 0.30), (1.0, 1.4), (0.08, 0.14), 2.2, 0.0, 0.9, 1.0),
    _LesionType("elongated", (0.02, 0.08), (1.9, 2.6), (0.01, 0.04), 1.0, 0.2, 1.0, 0.95),
    _LesionType("ring", (0.03, 0.10), (1.0, 1.3), (0.02, 0.05), 0.8, -0.8, 1.3, 1.0),
)
_BINARY_TYPE = _LesionType("lesion", (0.03, 0.26), (1.0, 1.6), (0.02, 0.10), 1.0, 0.0, 1.0, 1.0)


def _lesion_types(num_classes: int) -> tuple[list[_LesionType], list[str]]:
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


# ------------------------------------------------------------------------------------------------
# Vectorised image operations on [N, H, W] batches.

def _smooth_fft(fields: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian smoothing of [N, H, W] fields, each renormalised to zero mean, unit std."""
    h, w = fields.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    tf = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx ** 2 + fy ** 2)).astype(np.float32)
    out = np.fft.irfft2(np.fft.rfft2(fields.astype(np.float32, copy=False)) * tf, s=(h, w))
    out -= out.mean(axis=(-2, -1), keepdims=True)
    out /= out.std(axis=(-2, -1), keepdims=True) + 1e-8
    return out


def _blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur with a per-image sigma [N] (0 = none), reflect-padded, via FFT."""
    smax = float(np.max(sigma)) if sigma.size else 0.0
    if smax <= 0.05:
        return images
    n, h, w = images.shape
    p = int(math.ceil(3 * smax)) + 1
    padded = np.pad(images, ((0, 0), (p, p), (p, p)), mode="reflect")
    hp, wp = h + 2 * p, w + 2 * p
    fy = np.fft.fftfreq(hp)[:, None]
    fx = np.fft.rfftfreq(wp)[None, :]
    f2 = (fx ** 2 + fy ** 2)[None]
    tf = np.exp(-2.0 * (math.pi * sigma[:, None, None]) ** 2 * f2).astype(np.float32)
    out = np.fft.irfft2(np.fft.rfft2(padded.astype(np.float32, copy=False)) * tf, s=(hp, wp))
    return out[:, p:p + h, p:p + w]


def _lerp(u, lo, hi):
    return lo + (hi - lo) * u


# ------------------------------------------------------------------------------------------------
# One client's split.

def _draw(seed: int, client: int, split: int, n: int, size: int):
    """Per-sample random draws: uniforms [n, U] and normal fields [n, F, S, S]."""
    uni = np.empty((n, _NUM_UNIFORMS), np.float64)
    fields = np.empty((n, _NUM_FIELDS, size, size), np.float32)
    for i in range(n):
        g = sample_rng(seed, client, split, i, _STREAM_IMAGE)
        uni[i] = g.random(_NUM_UNIFORMS)
        fields[i] = g.standard_normal((_NUM_FIELDS, size, size), dtype=np.float32)
    return uni, fields


def _lesion_free_flags(seed: int, client: int, split: int, n: int, fraction: float) -> np.ndarray:
    """Lesion-free flags from a golden-ratio (low-discrepancy) sequence with a random phase.

    Spreads the lesion-free images evenly: for every n the count stays close to n * fraction
    (within about one image for the sizes used here), unlike independent coin flips.
    """
    if fraction <= 0:
        return np.zeros(n, bool)
    phase = sample_rng(seed, client, split, 0, _STREAM_LESION_FREE).random()
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    return np.mod(phase + golden * np.arange(n), 1.0) < fraction


def _render_split(domain: Domain, types: Sequence[_LesionType], uni: np.ndarray, fields: np.ndarray,
                  lesion_free: np.ndarray, size: int):
    """Render images [n, S, S] in [0, 1] and per-class masks [n, S, S, K] from the draws."""
    n = uni.shape[0]
    k_cls = len(types)
    s = float(size)
    px = s / 64.0  # pixel-scale parameters are specified at 64 px
    col = iter(range(_NUM_UNIFORMS))

    def u():  # next uniform column, [n]
        return uni[:, next(col)]

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    yy, xx = yy[None], xx[None]

    # --- skin background -----------------------------------------------------------------------
    coarse = _smooth_fft(fields[:, 0], domain.texture_scale * s)
    fine = _smooth_fft(fields[:, 1], 0.9 * px)
    bg_level = domain.bg_level + _lerp(u(), -0.05, 0.05)
    img = (bg_level[:, None, None] + domain.bg_texture * (0.75 * coarse + 0.35 * fine)).astype(np.float32)
    ang = 2 * math.pi * u()
    amp = domain.gradient * _lerp(u(), 0.4, 1.0)
    proj = ((xx - s / 2) * np.cos(ang)[:, None, None] + (yy - s / 2) * np.sin(ang)[:, None, None]) / s
    img = img + amp[:, None, None] * proj
    rr2 = ((xx - s / 2) ** 2 + (yy - s / 2) ** 2) / (s / 2) ** 2
    img = img - domain.vignette * _lerp(u(), 0.7, 1.3)[:, None, None] * np.clip(rr2 - 0.35, 0, None)

    # --- lesions -------------------------------------------------------------------------------
    lesion_tex = _smooth_fft(fields[:, 2], 1.6 * px).astype(np.float32)
    img = img.astype(np.float32)
    skin = img.copy()
    u_count, u_count2 = u(), u()
    if k_cls == 1:
        n_les = 1 + (u_count < 0.22)
    else:
        n_les = 1 + (u_count < 0.45) + ((u_count < 0.45) & (u_count2 < 0.35))
    n_les = np.where(lesion_free, 0, n_les)
    shrink = np.where(n_les >= 2, 0.72, 1.0)
    masks = np.zeros((n, size, size, k_cls), bool)
    geoms, cls_of = [], []
    cx0 = cy0 = r_prev = None
    for slot in range(_MAX_LESIONS):
        active = n_les > slot
        uc, uy, ur, ue, ua, ui = u(), u(), u(), u(), u(), u()
        amps = np.stack([u() for _ in range(5)], 1)
        phis = 2 * math.pi * np.stack([u() for _ in range(5)], 1)
        ucls, ucon, ujag, udir, udist, uedge = u(), u(), u(), u(), u(), u()
        cls = np.minimum((ucls * k_cls).astype(int), k_cls - 1)
        pick = lambda attr: np.array([getattr(t, attr) for t in types])[cls]  # noqa: E731
        rng_attr = lambda attr, v: _lerp(v, np.array([getattr(t, attr)[0] for t in types])[cls],  # noqa: E731
                                         np.array([getattr(t, attr)[1] for t in types])[cls])
        r0 = s * _lerp(ur, 0.13, 0.29) * domain.size * shrink * pick("size")
        if slot == 0:
            cx = s * _lerp(uc, 0.32, 0.68)
            cy = s * _lerp(uy, 0.32, 0.68)
        else:
            d = (r_prev + r0) * _lerp(udist, 0.95, 1.45)
            th = 2 * math.pi * udir
            cx = np.clip(cx0 + d * np.cos(th), 0.12 * s, 0.88 * s)
            cy = np.clip(cy0 + d * np.sin(th), 0.12 * s, 0.88 * s)
        if slot == 0:
            cx0, cy0, r_prev = cx, cy, r0
        ecc = np.sqrt(rng_attr("eccentricity", ue))
        rot = math.pi * ua
        budget = rng_attr("irregularity", ui)
        weights = amps / np.arange(2, 7) ** 0.7
        weights = weights / weights.sum(1, keepdims=True) * budget[:, None]
        jag = rng_attr("jag", ujag)
        edge = domain.edge * px * _lerp(uedge, 0.7, 1.3)
        contrast = domain.lesion_contrast * pick("contrast") * _lerp(ucon, 0.75, 1.25)
        # Ring-like types (negative core) override the domain's core darkening.
        core = np.where(pick("core") < 0, pick("core"), domain.core + pick("core"))
        tex_amp = domain.lesion_texture * pick("texture")
        # Render only the samples that have this lesion (float32, [m, S, S]).
        sel = np.nonzero(active)[0]
        if sel.size == 0:
            continue
        col_ = lambda a: a[sel].astype(np.float32)[:, None, None]  # noqa: E731
        dx, dy = xx - col_(cx), yy - col_(cy)
        c, sn = col_(np.cos(rot)), col_(np.sin(rot))
        xr = (dx * c + dy * sn) / col_(ecc)
        yr = (dy * c - dx * sn) * col_(ecc)
        rho = np.hypot(xr, yr)
        inv = 1.0 / np.maximum(rho, 1e-6)
        c1, s1 = xr * inv, yr * inv  # cos(theta), sin(theta)
        ck, sk = c1 * c1 - s1 * s1, 2 * c1 * s1  # k = 2
        harm = np.ones_like(rho)
        for j in range(5):  # k = 2..6: cos(k theta + phi) = cos k theta cos phi - sin k theta sin phi
            ph = phis[:, j]
            harm += col_(weights[:, j]) * (ck * col_(np.cos(ph)) - sk * col_(np.sin(ph)))
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        tex = lesion_tex[sel]
        radius = col_(r0) * harm * (1 + col_(jag) * tex)
        dist = radius - rho  # > 0 inside, ~ px along the ray
        alpha = 1.0 / (1.0 + np.exp(-np.clip(dist / col_(edge), -30, 30)))
        rel = np.clip(rho / np.maximum(radius, 1e-3), 0, 1)
        dark = col_(contrast) * (1 + col_(core) * (1 - rel)) + col_(tex_amp) * tex
        dark = np.maximum(dark, 0.2 * col_(contrast))  # texture never makes a lesion brighter than skin
        # "Over" compositing on the lesion-free skin: a later lesion hides an earlier one.
        img[sel] = (1 - alpha) * img[sel] + alpha * (skin[sel] - dark)
        geom = np.zeros((n, size, size), bool)
        geom[sel] = dist > 0
        geoms.append(geom)
        cls_of.append(cls)
    # A class mask is the visible part of its lesions (later lesions are drawn over earlier ones).
    covered = np.zeros((n, size, size), bool)
    for geom, cls in zip(geoms[::-1], cls_of[::-1]):
        visible = geom & ~covered
        masks[np.arange(n), :, :, cls] |= visible
        covered |= geom

    # --- hairs: thin dark arcs, rasterised from dense point samples -------------------------------
    n_hairs = np.minimum(np.floor(2 * domain.hairs * u()), _MAX_HAIRS).astype(int)
    hair_u = np.stack([u() for _ in range(_MAX_HAIRS * 5)], 1).reshape(n, _MAX_HAIRS, 5)
    if domain.hairs > 0 and n_hairs.any():
        t = np.linspace(0.0, 1.0, int(3 * size))[None, None]
        x0, y0 = s * hair_u[..., 0:1], s * hair_u[..., 1:2]
        a0 = 2 * math.pi * hair_u[..., 2:3]
        curv = _lerp(hair_u[..., 3:4], -2.0, 2.0)
        length = s * _lerp(hair_u[..., 4:5], 0.5, 1.3)
        ang_t = a0 + curv * t
        xs = x0 + length * np.cumsum(np.cos(ang_t), -1) / t.shape[-1]
        ys = y0 + length * np.cumsum(np.sin(ang_t), -1) / t.shape[-1]
        on = (np.arange(_MAX_HAIRS)[None, :, None] < n_hairs[:, None, None])
        xi, yi = np.floor(xs).astype(int), np.floor(ys).astype(int)
        on = on & (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        hair = np.zeros((n, size * size))
        nidx = np.broadcast_to(np.arange(n)[:, None, None], on.shape)
        hair[nidx[on], (yi * size + xi)[on]] = 1.0
        hair = _blur(hair.reshape(n, size, size), np.full(n, 0.45 * px))
        hair = np.clip(hair / (hair.max(axis=(1, 2), keepdims=True) + 1e-8) * 1.4, 0, 1)
        img = img * (1 - 0.55 * hair)

    # --- acquisition -----------------------------------------------------------------------------
    sigma = domain.blur * px * _lerp(u(), 0.8, 1.2)
    img = _blur(img, sigma)
    img = np.clip(img, 0.0, 1.0) ** domain.gamma
    img = domain.gain * img + domain.offset
    if domain.speckle > 0:
        spk = _smooth_fft(fields[:, 4], 0.9 * px)
        img = img * (1 + domain.speckle * spk)
    noise = domain.noise * _lerp(u(), 0.8, 1.2)
    img = img + noise[:, None, None] * fields[:, 3]
    return np.clip(img, 0.0, 1.0).astype(np.float32), masks


def _make_client_split(seed, client, split, n, domain, types, size, lesion_free_fraction, level,
                       box_margin, box_mode="component"):
    if n == 0:
        k = len(types)
        return dict(images=np.zeros((0, size, size, 1), np.float32),
                    masks=np.zeros((0, size, size, k), np.float32),
                    boxes=np.zeros((0, size, size, k), np.float32),
                    image_labels=np.zeros((0, k), np.float32), levels=np.zeros((0,), np.int32))
    uni, fields = _draw(seed, client, split, n, size)
    free = _lesion_free_flags(seed, client, split, n, lesion_free_fraction)
    images, masks = _render_split(domain, types, uni, fields, free, size)
    masks = masks.astype(np.float32)
    boxes = np.stack([
        box_masks_from_masks(masks[i], sample_rng(seed, client, split, i, _STREAM_BOX),
                             margin=box_margin, box_mode=box_mode)
        for i in range(n)])
    return dict(images=images[..., None], masks=masks, boxes=boxes,
                image_labels=(masks.max(axis=(1, 2)) > 0).astype(np.float32),
                levels=np.full((n,), level, np.int32))


def _per_client(value, num_clients: int, what: str, default) -> list:
    if np.isscalar(value) or isinstance(value, str):
        return [value] * num_clients
    value = list(value)
    if len(value) == num_clients:
        return value
    if value and tuple(value) == tuple(default):  # the defaults describe 4 clients: cycle them
        return [value[c % len(value)] for c in range(num_clients)]
    raise ValueError(f"{what} has {len(value)} entries, expected num_clients={num_clients}")


def make_synthetic_federation(num_clients: int = 4, image_size: int = 64,
                              train_sizes: Sequence[int] | int = _DEFAULT_TRAIN_SIZES,
                              val_size: Sequence[int] | int = 24,
                              test_size: Sequence[int] | int = 48,
                              levels: Sequence[str] | str = _DEFAULT_LEVELS,
                              lesion_free_fraction: float = 0.15, num_classes: int = 1,
                              seed: int = 0, box_margin=(1, 9),
                              box_mode: str = "component") -> Federation:
    """Build the synthetic federation (see the module docstring for the domains).

    Args:
      num_clients: number of clients; clients 0-3 use the preset domains, later ones perturbed
        copies. Default train sizes and levels are cycled when ``num_clients != 4``.
      image_size: square image side in px.
      train_sizes, val_size, test_size: samples per client, an int (every client) or one per
        client; val and test are always fully labelled in ``masks`` (evaluation only).
      levels: supervision level name per client for the training split ('pixel'/'L', 'box'/'B',
        'image'/'I', 'none'/'U'); val and test carry the same per-client levels.
      lesion_free_fraction: fraction of images without lesion (empty masks, image label 0), spread
        evenly over each client's samples.
      num_classes: 1 (binary lesion task) or 2..8 lesion types (nodular, irregular, elongated,
        ring, then smaller variants), with per-class masks, boxes and image labels.
      seed: everything is a deterministic function of the seed.
      box_margin: ``(lo, hi)`` px margin per box side, drawn once per sample (reference: 1-9).
      box_mode: ``'component'`` (one box per connected component) or ``'enclosing'`` (the
        reference's one box around all of a class's foreground; see :mod:`fedmix_jax.data.boxes`).

    Returns:
      A :class:`~fedmix_jax.data.federation.Federation` whose splits follow the padded layout:
      images [C, N, S, S, 1], masks/boxes [C, N, S, S, K], image_labels [C, N, K], levels [C, N],
      valid [C, N].
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= lesion_free_fraction <= 1.0:
        raise ValueError(f"lesion_free_fraction must be in [0, 1], got {lesion_free_fraction}")
    box_mode = check_box_mode(box_mode)
    types, class_names = _lesion_types(int(num_classes))
    sizes = {
        "train": [int(v) for v in _per_client(train_sizes, num_clients, "train_sizes", _DEFAULT_TRAIN_SIZES)],
        "val": [int(v) for v in _per_client(val_size, num_clients, "val_size", ())],
        "test": [int(v) for v in _per_client(test_size, num_clients, "test_size", ())],
    }
    for split, ns in sizes.items():
        if any(v < 0 for v in ns):
            raise ValueError(f"{split} sizes must be >= 0, got {ns}")
    lv = [level_from_name(v) for v in _per_client(levels, num_clients, "levels", _DEFAULT_LEVELS)]
    domains = [client_domain(c) for c in range(num_clients)]
    out = {}
    for split, split_id in _SPLITS.items():
        per_client = [
            _make_client_split(int(seed), c, split_id, sizes[split][c], domains[c], types,
                               int(image_size), float(lesion_free_fraction), lv[c], box_margin,
                               box_mode)
            for c in range(num_clients)]
        out[split] = stack_clients(per_client)
    return Federation(client_names=[d.name for d in domains], class_names=class_names, **out)


def synthetic_federation_from_config(cfg: Any = None) -> Federation:
    """:func:`make_synthetic_federation` from an ``ml_collections.ConfigDict`` (or a mapping).

    Recognised fields: image_size, num_clients, train_sizes, val_size, test_size, levels,
    lesion_free_fraction, num_classes, seed, box_margin, box_mode; missing fields take the
    defaults.
    """
    names = ("num_clients", "image_size", "train_sizes", "val_size", "test_size", "levels",
             "lesion_free_fraction", "num_classes", "seed", "box_margin", "box_mode")
    kwargs = {}
    if cfg is not None:
        for name in names:
            if hasattr(cfg, "get"):
                value = cfg.get(name, None)
            else:
                value = getattr(cfg, name, None)
            if value is not None:
                if isinstance(value, list):
                    value = tuple(value)
                kwargs[name] = value
    return make_synthetic_federation(**kwargs)


def preview_grid(federation: Federation, path: str, per_client: int = 6, split: str = "train") -> str:
    """Write a PNG grid of ``per_client`` images per client with mask contours and box outlines.

    Rows are clients (name and training level in the row title); the mask contour is drawn in red
    (multi-class: one colour per class, solid) and the box mask outline dashed in the same colour.
    Uses Matplotlib's Agg canvas directly (the global pyplot backend is not touched). Returns
    ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fedmix_jax.data.federation import LEVEL_NAMES

    data: FederatedSplit = getattr(federation, split)
    c_num = data.num_clients
    k_num = data.num_classes
    colours = ["#ff3030", "#30c0ff", "#ffd000", "#40ff60", "#ff60ff", "#ff9030", "#a0a0ff", "#ffffff"]
    colour_names = ["red", "cyan", "yellow", "green", "magenta", "orange", "lavender", "white"]
    fig = Figure(figsize=(1.6 * per_client, 1.75 * c_num), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(c_num, per_client, squeeze=False)
    for c in range(c_num):
        count = int(np.asarray(data.valid[c]).sum())
        for j in range(per_client):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= count:
                ax.axis("off")
                continue
            ax.imshow(np.asarray(data.images[c, j, ..., 0]), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            for k in range(k_num):
                col = colours[k % len(colours)] if k_num > 1 else colours[0]
                m = np.asarray(data.masks[c, j, ..., k])
                b = np.asarray(data.boxes[c, j, ..., k])
                if m.any():
                    ax.contour(m, levels=[0.5], colors=[col], linewidths=0.9)
                if b.any():
                    bcol = col if k_num > 1 else "#ffd000"
                    ax.contour(b, levels=[0.5], colors=[bcol], linewidths=0.8, linestyles="dashed")
            if j == 0:
                lv = LEVEL_NAMES[int(np.asarray(data.levels[c, 0]))]
                ax.set_ylabel(f"{federation.client_names[c]}\n({lv}, n={count})", fontsize=7)
    if k_num > 1:
        fig.suptitle("classes: " + ", ".join(f"{n} ({colour_names[k % len(colours)]})"
                                             for k, n in enumerate(federation.class_names)),
                     fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    return path
