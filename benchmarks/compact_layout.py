"""Evaluation on the padded split against its compact layout (``config.data.compact``).

    python benchmarks/compact_layout.py [--sizes 453,674,88,792 --image_size 64 --width 16
                                         --repeats 5]

A held-out split padded to its largest client evaluates every padded image; its compact layout
(:mod:`fedmix_jax.data.compact`) evaluates the clients' rows only. The default sizes are
HAM10000's test split (3,168 padded rows for 2,007 images). Both are timed interleaved in one
process, on JAX's default device, with the same params; the script checks that every metric is
equal and prints the median times, their paired ratio and the bytes on the device.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):   # run as a script: import from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="453,674,88,792", help="images per client")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--width", type=int, default=16, help="U-Net width")
    p.add_argument("--chunk", type=int, default=64, help="images per inference chunk")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    import jax

    from fedmix_jax.data.compact import put_compact
    from fedmix_jax.data.federation import PIXEL, stack_clients
    from fedmix_jax.evaluation import evaluate
    from fedmix_jax.models import UNet, init_unet

    s, rng = a.image_size, np.random.default_rng(0)
    sizes = [int(n) for n in a.sizes.split(",")]

    def client(n):
        return dict(images=rng.integers(0, 256, (n, s, s, 1), dtype=np.uint8),
                    masks=(rng.random((n, s, s, 1)) < 0.2).astype(np.uint8),
                    boxes=np.zeros((n, s, s, 1), np.uint8),
                    image_labels=np.ones((n, 1), np.float32), levels=np.full(n, PIXEL, np.int32))

    split = stack_clients([client(n) for n in sizes])
    model = UNet(width=a.width)
    params = init_unet(jax.random.PRNGKey(0), model, (1, s, s, 1))
    layouts = {"padded": jax.device_put(split), "compact": put_compact(split)}
    first = {k: evaluate(model, params, d, chunk_size=a.chunk, hd95=False)
             for k, d in layouts.items()}               # compiles; and the results must agree
    for key, value in first["padded"].items():
        np.testing.assert_array_equal(value, first["compact"][key], err_msg=key)
    times = {k: [] for k in layouts}
    for _ in range(a.repeats):
        for k, d in layouts.items():
            t0 = time.perf_counter()
            evaluate(model, params, d, chunk_size=a.chunk, hd95=False)
            times[k].append(time.perf_counter() - t0)
    res = {k: dict(rows=int(d.images.shape[0] if k == "compact" else np.prod(d.valid.shape)),
                   bytes=int(sum(x.nbytes for x in jax.tree.leaves(d))),
                   median_s=float(np.median(times[k]))) for k, d in layouts.items()}
    ratio = float(np.median(np.array(times["padded"]) / np.array(times["compact"])))
    print(f"clients {sizes}, {s} px, U-Net width {a.width}, {jax.devices()[0].platform}, "
          f"{a.repeats} interleaved repeats; every metric equal")
    for k, r in res.items():
        print(f"  {k:<8} {r['rows']:>6} rows  {r['bytes'] / 2**20:8.1f} MiB  "
              f"evaluate {r['median_s']:.3f} s (median)")
    print(f"  padded / compact, paired median: {ratio:.2f}x")
    return dict(layouts=res, ratio=ratio)


if __name__ == "__main__":
    main()
