"""Optional limits on one site's influence on the aggregate (server side, numpy on the host).

The update-norm bound (run config ``max-update-norm-ratio``: :func:`norm_outliers`), the
coordinate-wise, unweighted aggregators (``aggregator``: :func:`robust_average`) and client-level
differential privacy (``dp-clip-norm`` C: :func:`clip_update`, Gaussian noise of std ``z · 2C`` from
the OS's entropy, :func:`add_noise`, and the (ε, δ) of R rounds, :func:`epsilon`), all off by
default. Shapes: ``K`` sites, ``P`` parameters of one model (a packed vector). Details:
docs/across_sites.md ("Checks of every reply", "Privacy").
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr

AGGREGATORS = ("weighted", "trimmed_mean", "median")


def update_norms(local: np.ndarray, broadcast: np.ndarray) -> np.ndarray:
    """``||local_k - broadcast||_2`` in float64: local [K, P], broadcast [P] -> [K] (several
    models: ``sqrt(sum of update_norms(...)**2)``)."""
    diff = np.asarray(local, np.float64) - np.asarray(broadcast, np.float64)[None]
    return np.sqrt(np.sum(diff * diff, axis=1))


def norm_outliers(norms: np.ndarray, trained: np.ndarray, ratio: float) -> np.ndarray:
    """[K] bool: the sites whose norm [K] is above ``ratio`` times the median norm of the sites
    that trained (``trained`` [K] bool); none when ``ratio <= 0``, no site trained or median 0."""
    norms, trained = np.asarray(norms, np.float64), np.asarray(trained, bool)
    median = float(np.median(norms[trained])) if ratio > 0 and trained.any() else 0.0
    return norms > ratio * median if median > 0 else np.zeros(norms.shape, bool)


def trimmed_mean(stacked: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Coordinate-wise mean [K, P] -> [P] without the ``floor(trim_fraction * K)`` lowest and
    highest values (float64 inside, the input dtype out); the median if nothing would remain."""
    x = np.asarray(stacked)
    k = x.shape[0]
    t = int(np.floor(float(trim_fraction) * k))
    if k - 2 * t < 1:
        return coordinate_median(x)
    s = np.sort(x.astype(np.float64), axis=0)[t:k - t]
    return np.mean(s, axis=0).astype(x.dtype)


def coordinate_median(stacked: np.ndarray) -> np.ndarray:
    """Coordinate-wise median [K, P] -> [P] (float64 inside, the input dtype out)."""
    x = np.asarray(stacked)
    return np.median(x.astype(np.float64), axis=0).astype(x.dtype)


def robust_average(stacked: np.ndarray, weights: np.ndarray, aggregator: str,
                   trim_fraction: float = 0.1) -> np.ndarray:
    """``"trimmed_mean"`` or ``"median"`` (unweighted) of the sites with positive weight: stacked
    [C, P], weights [C] -> [P]; with none, the first row (the broadcast, as callers pass it)."""
    if aggregator not in AGGREGATORS[1:]:
        raise ValueError(f"aggregator must be one of {AGGREGATORS[1:]}, got {aggregator!r}")
    take, x = np.asarray(weights) > 0, np.asarray(stacked)
    if not take.any():
        return x[0]
    x = x[take]
    return coordinate_median(x) if aggregator == "median" else trimmed_mean(x, trim_fraction)


def check_options(aggregator: str, max_update_norm_ratio: float, trim_fraction: float) -> None:
    """ValueError on an unknown aggregator, a negative ratio or a trim fraction outside [0, 0.5)."""
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
    if not max_update_norm_ratio >= 0:
        raise ValueError(f"max-update-norm-ratio must be >= 0 (0: off), got "
                         f"{max_update_norm_ratio}")
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim-fraction must lie in [0, 0.5), got {trim_fraction}")


def check_dp_options(clip_norm: float, noise_multiplier: float, delta: float,
                     aggregator: str) -> None:
    """ValueError naming the run config key out of range, or a robust aggregator with DP on."""
    if not (math.isfinite(clip_norm) and clip_norm >= 0):
        raise ValueError(f"run config dp-clip-norm must be >= 0 (0: off), got {clip_norm}")
    if clip_norm == 0:
        return
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError("run config dp-noise-multiplier must be > 0 when dp-clip-norm is on, "
                         f"got {noise_multiplier}")
    if not 0 < delta < 1:
        raise ValueError(f"run config dp-delta must be in (0, 1), got {delta}")
    if aggregator != "weighted":
        raise ValueError(f"differential privacy needs aggregator 'weighted' (its sensitivity "
                         f"bound assumes a convex combination), got {aggregator!r}")


def clip_update(local: dict, broadcast: dict, clip_norm: float) -> tuple[dict, float]:
    """``(broadcast + Δ · min(1, C/‖Δ‖), ‖Δ‖)``, ``Δ = local - broadcast`` over all keys of
    ``broadcast`` together (float64); ``{key: [P_key] array}`` in, ``local``'s dtypes out."""
    diffs = {k: np.asarray(local[k], np.float64) - np.asarray(b, np.float64)
             for k, b in broadcast.items()}
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in diffs.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = {k: (np.asarray(broadcast[k], np.float64) + d * scale).astype(np.asarray(local[k]).dtype)
           for k, d in diffs.items()}
    return out, norm


def noise_std(clip_norm: float, noise_multiplier: float) -> float:
    """σ of the noise on every coordinate: ``z · 2C`` (the aggregate's sensitivity is 2C)."""
    return float(noise_multiplier) * 2.0 * float(clip_norm)


def add_noise(arrays: dict, std: float, rng: np.random.Generator | None = None) -> dict:
    """Each array plus N(0, std²) per coordinate (float64 noise, cast back to its dtype);
    ``rng`` defaults to a generator seeded from the operating system's entropy."""
    rng = np.random.default_rng() if rng is None else rng
    return {k: (np.asarray(a, np.float64) + rng.normal(0.0, std, np.shape(a))).astype(
        np.asarray(a).dtype) for k, a in arrays.items()}


def delta_of(eps: float, mu: float) -> float:
    """δ(ε) of a μ-Gaussian mechanism (Balle & Wang 2018), computed in log space."""
    if mu <= 0:
        return 0.0
    a = log_ndtr(-eps / mu + mu / 2)
    b = eps + log_ndtr(-eps / mu - mu / 2)
    return float(math.exp(a) * -math.expm1(min(b - a, 0.0)))


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The smallest ε for which ``rounds`` rounds at noise multiplier z are (ε, δ)-DP
    (``μ = √rounds / z``); 0 for no round, ``inf`` for z = 0."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    mu = math.sqrt(rounds) / noise_multiplier
    if delta_of(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_of(hi, mu) > delta:
        lo, hi = hi, hi * 2
        if hi > 1e7:
            return math.inf
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid, mu) > delta else (lo, mid)
    return hi
