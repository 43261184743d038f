"""Memory of a loaded federation: bytes per sample, padding, uint8 storage vs float32, peak RSS.

Writes a HAM10000-layout tree of realistic size (by default the real dataset's 10,015 images at
600x450 JPEG, with the real clients' sizes and the metadata CSV; synthetic pixels, see
:mod:`fedmix_jax.data.real.make_fixture`), builds the project's cache at ``--image_size`` (the
same builder a training run uses), loads the federation once per ``--channels`` value in a fresh
process and prints, per split and array: dtype, bytes per sample, totals; the padding overhead
(padded vs valid samples); the float32 layout stored before (images, masks and boxes float32) vs
the uint8 layout stored now; the peak RSS of the loading process; and the bytes on the device
when the job puts the splits there without their padding (``config.data.compact``).

    python benchmarks/memory.py --out_dir /tmp/ham_mem            # full size: minutes
    python benchmarks/memory.py --data_dir /tmp/ham_mem/tree --out_dir /tmp/ham_mem  # reuse
    python benchmarks/memory.py --num_images 200 --width 60 --height 45 --image_size 32  # quick

``--channels 1`` is the default configuration (``configs/isic.py``: grayscale); ``3`` is RGB
(``--config.data.channels=3``). Without ``--out_dir`` everything goes to a temporary folder that
is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types

if __package__ in (None, ""):   # run as a script: import from the repository root, and keep
    # this folder off sys.path (its modules must not shadow the standard library's)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from fedmix_jax import placement  # noqa: E402

GIB = 1024 ** 3
MIB = 1024 ** 2
FIELDS = ("images", "masks", "boxes", "image_labels", "levels", "valid")
#: The dtypes every field had before uint8 storage (issue 14): images / masks / boxes float32.
BEFORE = {"images": 4, "masks": 4, "boxes": 4, "image_labels": 4, "levels": 4, "valid": 1}


def client_sizes(num_images: int) -> list[int]:
    """The real HAM10000 client sizes, scaled to ``num_images`` (largest remainder; at least 8
    per client, so that small runs still fill every client's train/validation/test)."""
    from fedmix_jax.data.real.make_fixture import HAM_REAL_CLIENT_SIZES

    real = np.asarray(list(HAM_REAL_CLIENT_SIZES.values()), float)
    quota = real * num_images / real.sum()
    sizes = np.floor(quota).astype(int)
    for i in np.argsort(sizes - quota)[: num_images - sizes.sum()]:
        sizes[i] += 1
    return [max(8, int(v)) for v in sizes]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure_loaded(data_dir: str, cache_dir: str, image_size: int, channels: int,
                   pack_labels: bool = False) -> dict:
    """Load the federation (in this process) and describe its arrays; see :func:`main`.
    ``pack_labels``: masks and boxes bit-packed as ``config.data.pack_labels`` does (each split
    as soon as it is read: the peak RSS includes one split's unpacked labels)."""
    from fedmix_jax.data.real.loader import default_data_config, load_federation_from_config
    from fedmix_jax.data.real.cache import prepare_dataset

    cfg = default_data_config("ham10000", data_dir=data_dir, cache_dir=cache_dir,
                              image_size=image_size, channels=channels,
                              pack_labels=bool(pack_labels))
    prepare_dataset(cfg, verbose=False)          # built already: opens it (imports, readers)
    rss_before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    fed = load_federation_from_config(cfg, verbose=False)
    if pack_labels:
        from fedmix_jax.data.federation import pack_federation_labels

        fed = pack_federation_labels(fed)
    load_s = time.perf_counter() - t0
    peak = max(_rss_kib("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    splits, totals = {}, dict(after=0, before=0, valid_after=0)
    for name in ("train", "val", "test"):
        s = getattr(fed, name)
        c, n = s.valid.shape
        valid = int(np.asarray(s.valid).sum())
        arrays = {}
        for f in FIELDS:
            a = np.asarray(getattr(s, f))
            per = a.nbytes // (c * n)
            elements = a.size // (c * n)
            if f in ("masks", "boxes"):       # H * W * K, also when bit-packed
                elements = int(np.prod(s.images.shape[2:4])) * a.shape[-1]
            arrays[f] = dict(dtype=str(a.dtype), shape=list(a.shape), bytes=int(a.nbytes),
                             per_sample=int(per), before_per_sample=int(elements * BEFORE[f]))
        per_sample = sum(v["per_sample"] for v in arrays.values())
        before_ps = sum(v["before_per_sample"] for v in arrays.values())
        splits[name] = dict(clients=c, padded_samples=c * n, valid_samples=valid,
                            counts=[int(v) for v in s.counts()], arrays=arrays,
                            per_sample=per_sample, before_per_sample=before_ps,
                            after_bytes=per_sample * c * n, before_bytes=before_ps * c * n,
                            valid_bytes=per_sample * valid)
        totals["after"] += per_sample * c * n
        totals["before"] += before_ps * c * n
        totals["valid_after"] += per_sample * valid
    # The peak the float32 loader had while stacking (estimated from the shapes): the earlier
    # splits' padded arrays + this split's per-client float32 lists + its padded output.
    held, old_peak = 0, 0
    for sp in splits.values():
        old_peak = max(old_peak, held + sp["before_per_sample"] * (sp["valid_samples"]
                                                                  + sp["padded_samples"]))
        held += sp["before_bytes"]
    padded = sum(sp["padded_samples"] for sp in splits.values())
    valid = sum(sp["valid_samples"] for sp in splits.values())
    clients, images_dtype = list(fed.client_names), str(fed.train.images.dtype)
    del s, a            # the loop's last split and array: the loaded arrays leave with `host`
    host, fed, _ = placement.take_host_arrays(fed)
    placed = _place_as_job(host)
    return dict(**placed, channels=channels, image_size=image_size, clients=clients,
                pack_labels=bool(pack_labels), splits=splits, images_dtype=images_dtype,
                after_bytes=totals["after"], before_bytes=totals["before"],
                valid_after_bytes=totals["valid_after"], padded_samples=padded,
                valid_samples=valid, padding_overhead=padded / max(valid, 1) - 1.0,
                old_peak_estimate_bytes=old_peak, rss_before_kib=rss_before,
                rss_peak_kib=peak, load_seconds=load_s)


def _place_as_job(host: dict) -> dict:
    """The splits on JAX's default device as the job puts them for the default ``map`` executor
    with ``config.data.compact`` (:func:`fedmix_jax.placement.place_splits`: the clients' rows,
    no padding; each host array dropped as soon as it is placed): the bytes there, this
    process's peak RSS through the placing and its RSS after it (on CPU the device's arrays
    are host memory)."""
    import jax

    t0 = time.perf_counter()
    placed = placement.place_splits(host, None, types.SimpleNamespace(executor="map",
                                                                      client_group=0), True)
    jax.block_until_ready(placed)
    return dict(device=str(jax.devices()[0].platform),
                compact_bytes=int(sum(x.nbytes for p in placed for x in jax.tree.leaves(p))),
                compact_rows=int(sum(p.images.shape[0] for p in placed)),
                place_seconds=time.perf_counter() - t0,
                rss_peak_placed_kib=max(_rss_kib("VmHWM"),
                                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
                rss_after_placed_kib=_rss_kib("VmRSS"))


def _load_in_subprocess(data_dir, cache_dir, image_size, channels, pack_labels=False) -> dict:
    """:func:`measure_loaded` in a fresh Python, so its peak RSS is the loading's alone."""
    code = ("import json, sys; sys.path.insert(0, %r); from benchmarks import memory; "
            "print('RESULT ' + json.dumps(memory.measure_loaded(%r, %r, %d, %d, %r)))"
            % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), data_dir, cache_dir,
               image_size, channels, bool(pack_labels)))
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"loading failed ({out.returncode}):\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _fmt_bytes(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / MIB:.1f} MiB"


def report(r: dict) -> str:
    """The printed tables of one :func:`measure_loaded` result."""
    lines = [f"== HAM10000 layout at {r['image_size']} px, channels={r['channels']} "
             f"({'grayscale, the default config' if r['channels'] == 1 else 'RGB'}"
             f"{'; masks and boxes bit-packed' if r.get('pack_labels') else ''}): "
             f"clients {', '.join(r['clients'])}"]
    lines.append(f"{'array':<14}{'dtype':<9}{'B/sample':>10}{'f32 before':>12}"
                 f"{'all splits':>13}{'before':>12}")
    for f in FIELDS:
        a = r["splits"]["train"]["arrays"][f]
        now = sum(sp["arrays"][f]["bytes"] for sp in r["splits"].values())
        before = sum(sp["arrays"][f]["before_per_sample"] * sp["padded_samples"]
                     for sp in r["splits"].values())
        lines.append(f"{f:<14}{a['dtype']:<9}{a['per_sample']:>10,}{a['before_per_sample']:>12,}"
                     f"{_fmt_bytes(now):>13}{_fmt_bytes(before):>12}")
    sp = r["splits"]["train"]
    lines.append(f"{'= one sample':<23}{sp['per_sample']:>10,}{sp['before_per_sample']:>12,}"
                 f"{_fmt_bytes(r['after_bytes']):>13}{_fmt_bytes(r['before_bytes']):>12}")
    lines.append("")
    lines.append(f"{'split':<6}{'per-client valid':<28}{'valid':>7}{'padded':>8}{'overhead':>10}"
                 f"{'uint8 now':>12}{'f32 before':>12}{'unpadded':>12}")
    for name, sp in r["splits"].items():
        ov = sp["padded_samples"] / max(sp["valid_samples"], 1) - 1
        lines.append(f"{name:<6}{str(sp['counts']):<28}{sp['valid_samples']:>7}"
                     f"{sp['padded_samples']:>8}{ov:>9.0%} {_fmt_bytes(sp['after_bytes']):>12}"
                     f"{_fmt_bytes(sp['before_bytes']):>12}{_fmt_bytes(sp['valid_bytes']):>12}")
    lines.append(f"{'all':<34}{r['valid_samples']:>7}{r['padded_samples']:>8}"
                 f"{r['padding_overhead']:>9.0%} {_fmt_bytes(r['after_bytes']):>12}"
                 f"{_fmt_bytes(r['before_bytes']):>12}{_fmt_bytes(r['valid_after_bytes']):>12}")
    lines.append("")
    lines.append(f"federation: {_fmt_bytes(r['after_bytes'])} stored now (uint8) vs "
                 f"{_fmt_bytes(r['before_bytes'])} before (float32), "
                 f"{r['before_bytes'] / max(r['after_bytes'], 1):.2f}x less; "
                 f"{_fmt_bytes(r['valid_after_bytes'])} without padding")
    lines.append(f"peak RSS while loading: {_fmt_bytes(r['rss_peak_kib'] * 1024)} "
                 f"(process before reading: {_fmt_bytes(r['rss_before_kib'] * 1024)}; "
                 f"increase {_fmt_bytes((r['rss_peak_kib'] - r['rss_before_kib']) * 1024)}); "
                 f"the float32 loader's stacking peak, estimated from the shapes: "
                 f"{_fmt_bytes(r['old_peak_estimate_bytes'])}; load {r['load_seconds']:.0f} s")
    lines.append(f"on the device, compact (config.data.compact, the default): "
                 f"{_fmt_bytes(r['compact_bytes'])} in {r['compact_rows']} rows (padded: "
                 f"{_fmt_bytes(r['after_bytes'])} in {r['padded_samples']}); put on "
                 f"{r['device']} in {r['place_seconds']:.1f} s, the host arrays dropped as "
                 f"they are placed (as the job does); process RSS: peak "
                 f"{_fmt_bytes(r['rss_peak_placed_kib'] * 1024)}, after placing "
                 f"{_fmt_bytes(r['rss_after_placed_kib'] * 1024)}"
                 + (" (the CPU device's arrays are host memory)" if r['device'] == 'cpu' else ""))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="", help="tree/ and cache/ go here (default: a temp "
                   "folder, removed at the end)")
    p.add_argument("--data_dir", default="", help="an existing HAM10000-layout tree to use "
                   "instead of writing one (default: OUT_DIR/tree, written unless present)")
    p.add_argument("--num_images", type=int, default=10015, help="images, spread over the "
                   "four clients in the real proportions (10015: the real sizes)")
    p.add_argument("--width", type=int, default=600, help="JPEG width (real: 600)")
    p.add_argument("--height", type=int, default=450, help="JPEG height (real: 450)")
    p.add_argument("--image_size", type=int, default=256, help="cache image size")
    p.add_argument("--channels", default="1,3", help="comma-separated: 1 (default config) / 3")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--pack_labels", action="store_true",
                   help="bit-pack masks and boxes (config.data.pack_labels: each split as it "
                   "is read)")
    a = p.parse_args(argv)
    from fedmix_jax.data.real.cache import prepare_dataset
    from fedmix_jax.data.real.loader import default_data_config
    from fedmix_jax.data.real.make_fixture import make_ham10000

    tmp = None
    out_dir = a.out_dir or (tmp := tempfile.mkdtemp(prefix="fedmix_memory_"))
    try:
        data_dir = a.data_dir or os.path.join(out_dir, "tree")
        cache_dir = os.path.join(out_dir, "cache")
        if not os.path.exists(os.path.join(data_dir, "HAM10000_metadata.csv")):
            sizes = client_sizes(a.num_images)
            print(f"writing a HAM10000-layout tree: {sum(sizes)} images {a.width}x{a.height} "
                  f"(clients {sizes}) -> {data_dir}", flush=True)
            t0 = time.perf_counter()
            make_ham10000(data_dir, size=(a.width, a.height), client_sizes=sizes,
                          progress=sys.stderr.isatty())
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
        results = {}
        for ch in (int(c) for c in a.channels.split(",") if c.strip()):
            cfg = default_data_config("ham10000", data_dir=data_dir, cache_dir=cache_dir,
                                      image_size=a.image_size, channels=ch)
            t0 = time.perf_counter()
            prepare_dataset(cfg, verbose=False)
            print(f"cache at {a.image_size} px, channels={ch}: "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            results[ch] = _load_in_subprocess(data_dir, cache_dir, a.image_size, ch,
                                              a.pack_labels)
            print(report(results[ch]), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
        return results
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
