"""Timing, memory, environment and JSON output shared by the benchmark's sections."""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def summarize(times) -> dict:
    """median / min / max / quartiles of a list of seconds."""
    t = np.asarray(times, np.float64)
    if t.size == 0:
        return dict(n=0)
    q1, q3 = np.percentile(t, [25, 75])
    return dict(n=int(t.size), median=float(np.median(t)), min=float(t.min()),
                max=float(t.max()), q1=float(q1), q3=float(q3),
                spread=float((t.max() - t.min()) / max(np.median(t), 1e-12)),
                all=[float(x) for x in t])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``fn()``, waiting for the device to finish."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def host_memory() -> dict:
    """Host RSS now and the process's peak (MB), from /proc (Linux) or ``resource``."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss_mb" if line.startswith("VmRSS") else "rss_peak_mb"
                    out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if "rss_peak_mb" not in out:
        scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
        out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return out


def device_memory() -> dict | None:
    """``memory_stats()`` of the first device (MB), or None where the backend has none."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    if not stats:
        return None
    keep = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k.replace("bytes", "mb"): stats[k] / 2 ** 20 for k in keep if k in stats}


def memory() -> dict:
    return dict(host=host_memory(), device=device_memory())


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict:
    import flax
    import optax

    dev = jax.devices()
    return dict(backend=jax.default_backend(), devices=len(dev),
                device_kind=getattr(dev[0], "device_kind", str(dev[0])),
                platform=dev[0].platform, jax=jax.__version__, flax=flax.__version__,
                optax=optax.__version__, numpy=np.__version__, python=sys.version.split()[0],
                cpu_count=os.cpu_count(), loadavg=loadavg(),
                xla_flags=os.environ.get("XLA_FLAGS", ""),
                compilation_cache=jax.config.jax_compilation_cache_dir)


def matmul_peak(sizes=None, repeats: int = 5) -> dict:
    """A float32 matmul peak: the best median GFLOP/s of ``jnp.dot`` over square ``sizes``."""
    if sizes is None:
        sizes = (1024, 2048) if jax.default_backend() == "cpu" else (4096, 8192)
    rows = []
    dot = jax.jit(jnp.dot)
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        jax.block_until_ready(dot(a, b))
        s = summarize([timed(functools.partial(dot, a, b))[0] for _ in range(repeats)])
        rows.append(dict(n=n, seconds=s, gflops=2.0 * n ** 3 / s["median"] / 1e9,
                         gflops_best=2.0 * n ** 3 / s["min"] / 1e9))
    best = max(rows, key=lambda r: r["gflops"])
    return dict(gflops=best["gflops"], gflops_best=best["gflops_best"], n=best["n"],
                sizes=rows, precision=str(jax.config.jax_default_matmul_precision))


def cost_flops(compiled) -> float | None:
    """FLOPs of a compiled program from XLA's cost analysis
    (``jitted.lower(...).compile().cost_analysis()``), or None where the backend has none."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return None
    return float(ca.get("flops", 0.0)) or None


# ----------------------------------------------------------------------------- round variants


def time_variants(variants: dict, repeats: int, warmup: int, images_per_round: int,
                  log=print, on_update=None) -> dict:
    """Compile + warm up each variant (a zero-argument callable running one round), then time
    ``repeats`` rounds interleaved across them (repeat r of every variant before repeat r + 1 of
    any, so a change of machine load hits every variant alike).

    ``on_update(partial_results)`` is called after each compile and each repeat, so that a run
    stopped by a time limit keeps what it measured. A failing variant is reported and dropped.
    """
    res = {}
    update = on_update or (lambda r: None)
    for name, v in list(variants.items()):
        try:
            t_first, _ = timed(v)
            for _ in range(warmup):
                timed(v)
            res[name] = dict(first_call_s=t_first, times=[], devices=getattr(v, "devices", 1))
            log(f"  {name}: first call {t_first:.2f} s")
        except Exception as e:  # noqa: BLE001 - a failing variant must not lose the others
            res[name] = dict(error=f"{type(e).__name__}: {e}"[:2000])
            log(f"  {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
            variants.pop(name)
        update(res)
    for _ in range(repeats):
        for name, v in list(variants.items()):
            try:
                res[name]["times"].append(timed(v)[0])
            except Exception as e:  # noqa: BLE001
                res[name]["error"] = f"{type(e).__name__}: {e}"[:2000]
                variants.pop(name)
        mem = memory()
        for name in variants:
            res[name]["memory"] = mem
        summarize_rounds(res, images_per_round)
        update(res)
    return summarize_rounds(res, images_per_round)


def summarize_rounds(res: dict, images_per_round: int) -> dict:
    """Adds seconds, compile time, client-images/s and the speed-up over ``baseline`` (and over
    ``torch`` where it ran) to each timed variant."""
    for row in res.values():
        if row.get("times"):
            s = summarize(row["times"])
            row["seconds"] = s
            row["compile_s"] = max(row["first_call_s"] - s["median"], 0.0)
            row["client_images_per_s"] = images_per_round / s["median"]
    torch_rows = {k: r["seconds"]["median"] for k, r in res.items()
                  if k.startswith("torch") and r.get("seconds")}
    refs = [(k, k) for k in ("baseline", *torch_rows) if k != "torch"]
    if torch_rows:     # "vs torch": against the fastest PyTorch variant (e.g. of its threads)
        refs.append(("torch", min(torch_rows, key=torch_rows.get)))
    for ref, name in refs:
        base = res.get(name, {}).get("seconds", {}).get("median")
        for row in res.values():
            if base and row.get("seconds"):
                row[f"speedup_vs_{ref}"] = base / row["seconds"]["median"]
                if ref == "torch":
                    row["torch_reference"] = name
                    # repeat r of both was timed back to back: the median of the per-repeat
                    # ratios follows load changes better than the ratio of the medians
                    pairs = list(zip(res[name]["times"], row["times"]))
                    row["speedup_vs_torch_paired"] = float(np.median([b / a for b, a in pairs]))
    return res


# A baseline's metric names -> the fields of RoundMetrics.reports (SiteReport).
_REPORT_FIELDS = {"counts": "num_usable", "weak": "num_weak", "selected_weak": "num_selected_weak",
                  "steps": "steps", "loss1": "loss1", "loss2": "loss2"}


def compare_rounds(a, b) -> dict:
    """How far apart two variants' first rounds are (same initial state): metrics and params.

    ``a`` / ``b`` have ``name``, ``first_metrics`` (a mapping with counts, weak, selected_weak,
    steps, loss1, loss2, weights, or a :class:`~fedmix_jax.round.RoundMetrics`) and
    ``first_global`` (the global pair).
    """
    ma, mb = a.first_metrics, b.first_metrics

    def get(m, k):
        if isinstance(m, dict):
            return np.asarray(m[k])
        return np.asarray(getattr(m.reports, _REPORT_FIELDS[k]) if k in _REPORT_FIELDS
                          else getattr(m, k))

    out = dict(between=[a.name, b.name])
    for k in ("counts", "weak", "selected_weak", "steps"):
        out[f"{k}_equal"] = bool(np.array_equal(get(ma, k), get(mb, k)))
    for k in ("loss1", "loss2", "weights"):
        x, y = get(ma, k).astype(np.float64), get(mb, k).astype(np.float64)
        out[f"{k}_max_rel_diff"] = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12)))
    diff = np.concatenate([np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).ravel()
                           for x, y in zip(jax.tree.leaves(a.first_global),
                                           jax.tree.leaves(b.first_global))])
    out["global_params_max_abs_diff"] = float(diff.max())
    out["global_params_median_abs_diff"] = float(np.median(diff))
    out["agree"] = bool(all(out[f"{k}_equal"] for k in ("counts", "weak", "selected_weak",
                                                         "steps"))
                        and out["loss1_max_rel_diff"] < 1e-3 and out["weights_max_rel_diff"] < 1e-3
                        and out["global_params_max_abs_diff"] < 2e-3
                        and out["global_params_median_abs_diff"] < 1e-5)
    return out


# ----------------------------------------------------------------------------- output


class Results:
    """The results dict, written to JSON after every change (atomically), optionally merged
    under ``section`` into an existing file."""

    def __init__(self, path: str | None, section: str | None = None):
        self.path, self.section = path, section
        self.data: dict = {}

    def set(self, key, value):
        self.data[key] = value
        self.write()

    def write(self):
        if not self.path:
            return
        payload = jsonable(self.data)
        if self.section:
            try:
                with open(self.path) as f:
                    existing = json.load(f)
            except (OSError, ValueError):
                existing = {}
            existing[self.section] = payload
            payload = existing
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, self.path)


def jsonable(x):
    """``x`` with numpy scalars / arrays as Python values, NaN / inf as None, and keys starting
    with ``_`` dropped."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    return x
