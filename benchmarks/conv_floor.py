"""The fastest round that XLA:CPU's convolution kernels allow: the round's convolutions alone.

    python benchmarks/conv_floor.py [--width 16 --depth 4 --image_size 64 --batch_size 8
                                     --chunk 16 --model_steps 32 --forward_images 192]

A FedMix round on CPU is mostly U-Net convolutions: every local step runs each convolution
forward and its two gradients (input and kernel), and pseudo-labelling runs them forward. This
script times exactly those convolutions at the round's shapes, with the kernels the round uses
(:func:`fedmix_jax.xla_cpu.conv2d_same`: XLA's forward convolution and, on CPU, the canonical
backward of workaround 1), **in a process pinned to one core**, and adds them up:

    floor = (model_steps * step_convs + forward_images * image_forward_convs) / cores

``step_convs`` is one model's forward + backward convolutions at ``--batch_size``;
``image_forward_convs`` is the forward convolutions per image at ``--chunk`` images per call.
Everything else the round does (GroupNorm, ReLU, pooling, upsampling, losses, Adam,
pseudo-label selection, aggregation, data movement) counts as free, and the cores are assumed
to be used perfectly. So no round built from these kernels can be faster than ``floor`` on this
machine, whatever its structure; a round at 1.1x its floor spends ~10 % outside convolutions.

``benchmarks/bench.py --conv_floor`` runs this in a child process with the round's own step and
image counts (from the compiled round's first-round metrics) and prints it with the round table,
so the torch round of the same run can be read against it (``torch seconds / floor`` is the
largest speed-up over torch that these kernels allow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

if __package__ in (None, ""):   # run as a script: import from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conv_layers(width: int, depth: int, image_size: int, in_channels: int = 1,
                num_classes: int = 1) -> list[tuple[int, int, int, int]]:
    """``(side, c_in, c_out, kernel)`` of every convolution of the reference U-Net
    (:class:`fedmix_jax.models.UNet`) on a square ``image_size`` input, in call order."""
    from fedmix_jax.models import unet_channels

    enc, dec = unet_channels(width, depth)
    sides = [image_size]
    for _ in range(depth):
        sides.append(sides[-1] // 2)        # 2x2 max-pool, floor
    layers = [(sides[0], in_channels, enc[0], 3), (sides[0], enc[0], enc[0], 3)]
    for i in range(1, depth + 1):
        layers += [(sides[i], enc[i - 1], enc[i], 3), (sides[i], enc[i], enc[i], 3)]
    for j in range(1, depth + 1):
        skip, prev = enc[depth - j], (enc[depth] if j == 1 else dec[j - 2])
        c = skip + prev                     # concat [skip, upsampled]; DoubleConv mid = c // 2
        layers += [(sides[depth - j], c, c // 2, 3), (sides[depth - j], c // 2, dec[j - 1], 3)]
    layers.append((image_size, dec[-1], num_classes, 1))
    return layers


def forward_gflop(layers) -> float:
    """Forward GFLOP of one image through ``layers`` (2 per multiply-add)."""
    return sum(2 * k * k * ci * co * s * s for s, ci, co, k in layers) / 1e9


def time_convs(layers, batch: int, chunk: int, repeats: int = 9) -> dict:
    """Median seconds of one model's convolutions: ``step`` (forward + both gradients at
    ``batch``) and ``image_forward`` (forward at ``chunk`` images, per image)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fedmix_jax.xla_cpu import conv2d_same

    def median(fn, *args):
        jax.block_until_ready(fn(*args))
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    step = image = 0.0
    rows = []
    for side, ci, co, k in layers:
        kernel = jnp.full((k, k, ci, co), 0.01, jnp.float32)
        fwd = jax.jit(lambda x, w, p=k // 2: conv2d_same(x, w, p))
        bwd = jax.jit(lambda x, w, g, p=k // 2: jax.vjp(lambda a, b: conv2d_same(a, b, p),
                                                         x, w)[1](g))
        x = jnp.ones((batch, side, side, ci), jnp.float32)
        g = jnp.ones((batch, side, side, co), jnp.float32)
        t_fwd, t_bwd = median(fwd, x, kernel), median(bwd, x, kernel, g)
        t_img = median(fwd, jnp.ones((chunk, side, side, ci), jnp.float32), kernel) / chunk
        step += t_fwd + t_bwd
        image += t_img
        rows.append(dict(side=side, c_in=ci, c_out=co, kernel=k, forward_s=t_fwd,
                         backward_s=t_bwd, image_forward_s=t_img))
    return dict(step_s=step, image_forward_s=image, layers=rows)


def floor(times: dict, model_steps: int, forward_images: int, cores: int) -> dict:
    """The round's convolution time on one core and spread perfectly over ``cores``."""
    one_core = model_steps * times["step_s"] + forward_images * times["image_forward_s"]
    return dict(one_core_s=one_core, cores=cores, floor_s=one_core / cores,
                model_steps=model_steps, forward_images=forward_images)


def measure(width: int, depth: int, image_size: int, batch: int, chunk: int,
            model_steps: int, forward_images: int, in_channels: int = 1, cores: int | None = None,
            timeout: float = 600.0) -> dict:
    """Runs this script in a child process pinned to one core and returns its result dict
    (``floor_s``, ``one_core_s``, ``step_s``, ``image_forward_s``, ``gflop``, ``layers``...).
    ``cores`` defaults to the cores this process may use."""
    from fedmix_jax.cpu_cores import usable_cores

    cmd = [sys.executable, os.path.abspath(__file__), "--json", "-",
           "--width", str(width), "--depth", str(depth), "--image_size", str(image_size),
           "--batch_size", str(batch), "--chunk", str(chunk), "--in_channels", str(in_channels),
           "--model_steps", str(model_steps), "--forward_images", str(forward_images),
           "--cores", str(cores or usable_cores())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"conv_floor child failed (rc {out.returncode}): "
                           f"{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_floor(res: dict) -> str:
    return (f"conv floor: the round's convolutions alone ({res['model_steps']} model-steps at "
            f"batch {res['batch_size']}, {res['forward_images']} images forward), timed on one "
            f"core: {res['one_core_s']:.3f} s; over {res['cores']} cores, perfectly split: "
            f"{res['floor_s']:.3f} s ({res['gflop']:.3g} GFLOP, "
            f"{res['gflop'] / res['one_core_s']:.1f} GFLOP/s per core)")


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--in_channels", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--chunk", type=int, default=16, help="images per pseudo-labelling call")
    p.add_argument("--model_steps", type=int, default=32,
                   help="local steps of one model in the round, summed over models and "
                        "clients (the bench's default size: 4 clients x 4 steps x 2 models)")
    p.add_argument("--forward_images", type=int, default=192,
                   help="images pseudo-labelled in the round, times 2 models (default size: "
                        "3 weak clients x 32 images x 2)")
    p.add_argument("--cores", type=int, default=0, help="0: the cores this process may use")
    p.add_argument("--core", type=int, default=-1,
                   help="pin to this core before JAX starts (-1: the first usable one)")
    p.add_argument("--json", default=None, help="write the result here ('-': last stdout line)")
    a = p.parse_args(argv)
    usable = sorted(os.sched_getaffinity(0))
    cores = a.cores or len(usable)
    os.sched_setaffinity(0, {a.core if a.core >= 0 else usable[0]})   # before JAX's threads
    layers = conv_layers(a.width, a.depth, a.image_size, a.in_channels)
    times = time_convs(layers, a.batch_size, a.chunk)
    res = dict(floor(times, a.model_steps, a.forward_images, cores), **times,
               batch_size=a.batch_size, chunk=a.chunk, width=a.width, depth=a.depth,
               image_size=a.image_size,
               gflop=forward_gflop(layers) * (3 * a.batch_size * a.model_steps
                                              + a.forward_images))
    if a.json == "-":
        print(json.dumps(res))
    else:
        print(format_floor(res))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
