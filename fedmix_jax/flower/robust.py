"""Optional limits on one site's influence on the aggregate (server side, numpy on the host).

The update-norm bound (run config ``max-update-norm-ratio``: :func:`norm_outliers`) and the
coordinate-wise, unweighted aggregators (``aggregator``: :func:`robust_average`), both off by
default. Shapes: ``K`` sites, ``P`` parameters of one model (a packed vector). Details:
docs/across_sites.md ("Checks of every reply").
"""

from __future__ import annotations

import numpy as np

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
    take = np.asarray(weights) > 0
    x = np.asarray(stacked)
    if not take.any():
        return x[0]
    if aggregator == "median":
        return coordinate_median(x[take])
    return trimmed_mean(x[take], trim_fraction)


def check_options(aggregator: str, max_update_norm_ratio: float, trim_fraction: float) -> None:
    """ValueError on an unknown aggregator, a negative ratio or a trim fraction outside [0, 0.5)."""
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
    if not max_update_norm_ratio >= 0:
        raise ValueError(f"max-update-norm-ratio must be >= 0 (0: off), got "
                         f"{max_update_norm_ratio}")
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim-fraction must lie in [0, 0.5), got {trim_fraction}")
