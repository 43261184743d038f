"""The synthetic federation's acquisition domains, lesion types and rendering.

:class:`Domain` is one client's look (:func:`client_domain`: presets, then perturbed copies),
:class:`LesionType` one class's lesion shape (:func:`lesion_types`); :func:`make_client_split`
renders ``n`` samples of one client, vectorised, as the unpadded ``stack_clients`` input.
Lesion model and domains: docs/data.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from fedmix_jax.data.boxes import box_masks_from_masks, sample_rng


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
           vignette=0.30, lesion_contrast=0.17, lesion_texture=0.04, core=0.35, edge=1.4, blur=0.8,
           noise=0.025, speckle=0.0, hairs=0.0, gamma=1.45, gain=0.95, offset=0.0, size=1.0),
    Domain("site_b_hairy", bg_level=0.70, bg_texture=0.09, texture_scale=0.05, gradient=0.06,
           vignette=0.05, lesion_contrast=0.30, lesion_texture=0.11, core=0.45, edge=0.6, blur=0.0,
           noise=0.06, speckle=0.0, hairs=3.0, gamma=1.0, gain=1.0, offset=0.0, size=0.9),
    Domain("site_c_clean", bg_level=0.62, bg_texture=0.035, texture_scale=0.10, gradient=0.05,
           vignette=0.08, lesion_contrast=0.34, lesion_texture=0.04, core=0.30, edge=0.8, blur=0.5,
           noise=0.015, speckle=0.0, hairs=0.3, gamma=1.0, gain=1.0, offset=0.0, size=1.0),
    Domain("site_d_bright", bg_level=0.72, bg_texture=0.05, texture_scale=0.16, gradient=0.12,
           vignette=0.0, lesion_contrast=0.26, lesion_texture=0.10, core=0.15, edge=1.6, blur=1.5,
           noise=0.025, speckle=0.07, hairs=0.0, gamma=0.75, gain=1.05, offset=-0.03, size=1.15),
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


# The lesion types of K > 1 classes (shape, texture); classes 4-7 are smaller copies of 0-3.
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
    small = [dataclasses.replace(t, name="small_" + t.name, size=0.6 * t.size)
             for t in LESION_TYPES]
    types = (list(LESION_TYPES) + small)[:num_classes]
    return types, [t.name for t in types]


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


_STREAM_IMAGE, _STREAM_BOX, _STREAM_LESION_FREE = 0, 1, 2
_MAX_LESIONS, _MAX_HAIRS = 3, 6
_NUM_UNIFORMS = 128
_NUM_FIELDS = 5  # coarse skin, fine skin, lesion texture, sensor noise, speckle


def _gauss_fft(x: np.ndarray, sigma) -> np.ndarray:
    """Periodic Gaussian smoothing of [N, H, W] by FFT (float32); ``sigma``: float or [N, 1, 1]."""
    h, w = x.shape[-2:]
    f2 = np.fft.rfftfreq(w)[None, :] ** 2 + np.fft.fftfreq(h)[:, None] ** 2
    tf = np.exp(-2.0 * (math.pi * sigma) ** 2 * f2).astype(np.float32)
    return np.fft.irfft2(np.fft.rfft2(x.astype(np.float32, copy=False)) * tf, s=(h, w))


def _smooth_fft(fields: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian smoothing of [N, H, W] fields, each renormalised to zero mean, unit std."""
    out = _gauss_fft(fields, sigma)
    out -= out.mean(axis=(-2, -1), keepdims=True)
    out /= out.std(axis=(-2, -1), keepdims=True) + 1e-8
    return out


def _blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur with a per-image sigma [N] (0 = none), reflect-padded, via FFT."""
    smax = float(np.max(sigma)) if sigma.size else 0.0
    if smax <= 0.05:
        return images
    h, w = images.shape[1:]
    p = int(math.ceil(3 * smax)) + 1
    padded = np.pad(images, ((0, 0), (p, p), (p, p)), mode="reflect")
    return _gauss_fft(padded, sigma[:, None, None])[:, p:p + h, p:p + w]


def _lerp(u, lo, hi):
    return lo + (hi - lo) * u


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
    """Lesion-free flags [n] from a golden-ratio sequence with a random phase: unlike coin flips,
    the count stays within about one image of ``n * fraction``."""
    if fraction <= 0:
        return np.zeros(n, bool)
    phase = sample_rng(seed, client, split, 0, _STREAM_LESION_FREE).random()
    return np.mod(phase + (math.sqrt(5.0) - 1.0) / 2.0 * np.arange(n), 1.0) < fraction


class _Canvas:
    """What a split's drawing steps share: pixel centres ``yy``, ``xx`` [1, S, S], side ``s``,
    ``px`` = s / 64, uniforms ``uni`` [n, U] read by :meth:`u` in a fixed order (it is data)."""

    def __init__(self, uni: np.ndarray, size: int):
        self.uni, self.size, self.n = uni, size, uni.shape[0]
        self.s, self.px = float(size), size / 64.0
        self.yy, self.xx = (np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5))[:, None]
        self._col = iter(range(_NUM_UNIFORMS))

    def u(self) -> np.ndarray:
        """The next uniform column, [n]."""
        return self.uni[:, next(self._col)]


def _skin(cv: _Canvas, domain: Domain, fields: np.ndarray) -> np.ndarray:
    """The lesion-free skin [n, S, S]: textured level, a linear gradient, a vignette."""
    s, xx, yy = cv.s, cv.xx, cv.yy
    coarse = _smooth_fft(fields[:, 0], domain.texture_scale * s)
    fine = _smooth_fft(fields[:, 1], 0.9 * cv.px)
    bg_level = domain.bg_level + _lerp(cv.u(), -0.05, 0.05)
    img = (bg_level[:, None, None]
           + domain.bg_texture * (0.75 * coarse + 0.35 * fine)).astype(np.float32)
    ang = 2 * math.pi * cv.u()
    amp = domain.gradient * _lerp(cv.u(), 0.4, 1.0)
    proj = ((xx - s / 2) * np.cos(ang)[:, None, None]
            + (yy - s / 2) * np.sin(ang)[:, None, None]) / s
    img = img + amp[:, None, None] * proj
    rr2 = ((xx - s / 2) ** 2 + (yy - s / 2) ** 2) / (s / 2) ** 2
    vignette = domain.vignette * _lerp(cv.u(), 0.7, 1.3)[:, None, None]
    img = img - vignette * np.clip(rr2 - 0.35, 0, None)
    return img.astype(np.float32)


def _lesion_count(cv: _Canvas, k_cls: int, lesion_free: np.ndarray) -> np.ndarray:
    """Lesions per image [n]: 1-2 (binary) or 1-3 (multi-class); 0 on lesion-free images."""
    u_count, u_count2 = cv.u(), cv.u()
    n_les = (1 + (u_count < 0.22) if k_cls == 1
             else 1 + (u_count < 0.45) + ((u_count < 0.45) & (u_count2 < 0.35)))
    return np.where(lesion_free, 0, n_les)


def _lesions(cv: _Canvas, domain: Domain, types: Sequence[LesionType], img: np.ndarray,
             lesion_tex: np.ndarray, n_les: np.ndarray):
    """Draw up to :data:`_MAX_LESIONS` lesions over ``img`` (changed in place): the per-class
    masks [n, S, S, K] of what stays visible (a later lesion hides an earlier one)."""
    n, s, px, size, k_cls = cv.n, cv.s, cv.px, cv.size, len(types)
    skin = img.copy()
    shrink = np.where(n_les >= 2, 0.72, 1.0)
    geoms, cls_of = [], []
    cx0 = cy0 = r_prev = None
    for slot in range(_MAX_LESIONS):
        uc, uy, ur, ue, ua, ui = (cv.u() for _ in range(6))
        amps = np.stack([cv.u() for _ in range(5)], 1)
        phis = 2 * math.pi * np.stack([cv.u() for _ in range(5)], 1)
        ucls, ucon, ujag, udir, udist, uedge = (cv.u() for _ in range(6))
        cls = np.minimum((ucls * k_cls).astype(int), k_cls - 1)
        pick = lambda attr: np.array([getattr(t, attr) for t in types])[cls]  # noqa: E731
        rng_attr = lambda attr, v: _lerp(v, pick(attr)[:, 0], pick(attr)[:, 1])  # noqa: E731
        r0 = s * _lerp(ur, 0.13, 0.29) * domain.size * shrink * pick("size")
        if slot == 0:
            cx, cy = s * _lerp(uc, 0.32, 0.68), s * _lerp(uy, 0.32, 0.68)
            cx0, cy0, r_prev = cx, cy, r0
        else:
            d = (r_prev + r0) * _lerp(udist, 0.95, 1.45)
            th = 2 * math.pi * udir
            cx = np.clip(cx0 + d * np.cos(th), 0.12 * s, 0.88 * s)
            cy = np.clip(cy0 + d * np.sin(th), 0.12 * s, 0.88 * s)
        weights = amps / np.arange(2, 7) ** 0.7
        weights = weights / weights.sum(1, keepdims=True) * rng_attr("irregularity", ui)[:, None]
        contrast = domain.lesion_contrast * pick("contrast") * _lerp(ucon, 0.75, 1.25)
        # Ring-like types (negative core) override the domain's core darkening.
        core = np.where(pick("core") < 0, pick("core"), domain.core + pick("core"))
        shape = dict(cx=cx, cy=cy, r0=r0, ecc=np.sqrt(rng_attr("eccentricity", ue)),
                     rot=math.pi * ua, weights=weights, phis=phis, jag=rng_attr("jag", ujag),
                     edge=domain.edge * px * _lerp(uedge, 0.7, 1.3), contrast=contrast,
                     core=core, tex_amp=domain.lesion_texture * pick("texture"))
        sel = np.flatnonzero(n_les > slot)       # only the samples that have this lesion
        if sel.size == 0:
            continue
        geom = np.zeros((n, size, size), bool)
        geom[sel] = _draw_lesion(cv, img, skin, lesion_tex, sel, **shape)
        geoms.append(geom)
        cls_of.append(cls)
    # A class mask is the visible part of its lesions (later lesions are drawn over earlier ones).
    masks = np.zeros((n, size, size, k_cls), bool)
    covered = np.zeros((n, size, size), bool)
    for geom, cls in zip(geoms[::-1], cls_of[::-1]):
        masks[np.arange(n), :, :, cls] |= geom & ~covered
        covered |= geom
    return masks


def _draw_lesion(cv: _Canvas, img, skin, lesion_tex, sel, *, cx, cy, r0, ecc, rot, weights, phis,
                 jag, edge, contrast, core, tex_amp) -> np.ndarray:
    """Composite one lesion slot over ``img[sel]`` (in place, float32 [m, S, S]): a star-shaped
    outline (harmonics k = 2..6 of the polar radius, jagged by texture), soft edge, darker core.
    Returns its geometry [m, S, S] (inside the outline)."""
    col_ = lambda a: a[sel].astype(np.float32)[:, None, None]  # noqa: E731
    dx, dy = cv.xx - col_(cx), cv.yy - col_(cy)
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
    return dist > 0


def _hairs(cv: _Canvas, domain: Domain, img: np.ndarray) -> np.ndarray:
    """Thin dark arcs over ``img``, rasterised from dense point samples."""
    n, s, size = cv.n, cv.s, cv.size
    n_hairs = np.minimum(np.floor(2 * domain.hairs * cv.u()), _MAX_HAIRS).astype(int)
    hair_u = np.stack([cv.u() for _ in range(_MAX_HAIRS * 5)], 1).reshape(n, _MAX_HAIRS, 5)
    if not (domain.hairs > 0 and n_hairs.any()):
        return img
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
    hair = _blur(hair.reshape(n, size, size), np.full(n, 0.45 * cv.px))
    hair = np.clip(hair / (hair.max(axis=(1, 2), keepdims=True) + 1e-8) * 1.4, 0, 1)
    return img * (1 - 0.55 * hair)


def _acquisition(cv: _Canvas, domain: Domain, fields: np.ndarray, img: np.ndarray) -> np.ndarray:
    """The device: blur, gamma, gain / offset, speckle, noise; clipped to [0, 1] float32."""
    img = _blur(img, domain.blur * cv.px * _lerp(cv.u(), 0.8, 1.2))
    img = domain.gain * np.clip(img, 0.0, 1.0) ** domain.gamma + domain.offset
    if domain.speckle > 0:
        img = img * (1 + domain.speckle * _smooth_fft(fields[:, 4], 0.9 * cv.px))
    img = img + (domain.noise * _lerp(cv.u(), 0.8, 1.2))[:, None, None] * fields[:, 3]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def make_client_split(seed, client, split, n, domain, types, size, lesion_free_fraction, level,
                      box_margin, box_mode="component"):
    """One client's split of ``n`` samples as the unpadded ``stack_clients`` input: images float32
    [n, S, S, 1] in [0, 1], masks / boxes uint8 [n, S, S, K], image_labels [n, K], levels [n]."""
    k = len(types)
    if n == 0:
        labels = np.zeros((0, size, size, k), np.uint8)
        return dict(images=np.zeros((0, size, size, 1), np.float32), masks=labels, boxes=labels,
                    image_labels=np.zeros((0, k), np.float32), levels=np.zeros((0,), np.int32))
    uni, fields = _draw(seed, client, split, n, size)
    free = _lesion_free_flags(seed, client, split, n, lesion_free_fraction)
    cv = _Canvas(uni, size)        # skin, lesions, hairs, acquisition: the uniforms' order
    img = _skin(cv, domain, fields)
    lesion_tex = _smooth_fft(fields[:, 2], 1.6 * cv.px).astype(np.float32)
    masks = _lesions(cv, domain, types, img, lesion_tex, _lesion_count(cv, k, free))
    images = _acquisition(cv, domain, fields, _hairs(cv, domain, img))
    boxes = np.stack([box_masks_from_masks(m, sample_rng(seed, client, split, i, _STREAM_BOX),
                                           margin=box_margin, box_mode=box_mode)
                      for i, m in enumerate(masks)])
    # Masks and boxes are {0, 1}: uint8 is lossless; the images are not 8-bit and stay float32.
    return dict(images=images[..., None], masks=masks.astype(np.uint8),
                boxes=boxes.astype(np.uint8), levels=np.full((n,), level, np.int32),
                image_labels=masks.any(axis=(1, 2)).astype(np.float32))
