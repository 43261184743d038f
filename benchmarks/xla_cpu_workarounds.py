"""Re-measure the XLA:CPU workarounds of ``fedmix_jax/xla_cpu.py`` against their plain forms.

    python benchmarks/xla_cpu_workarounds.py [--width 16 --image_size 64 --batch_size 8
                                              --steps 4 --repeats 3]

For each workaround it times the U-Net as the package builds it (workaround on) and the same
U-Net with that one workaround replaced by its plain JAX form (off). Both are freshly jitted in
the same process, and the repeats are interleaved. It prints ``off / on``. A ratio of about 1
means the workaround no longer pays on this XLA version and can be removed (see the module's
docstring for how). The rows:

* ``conv_backward_in_scan``: a local epoch (``lax.scan`` over ``--steps`` Adam steps of the
  U-Net), with :func:`~fedmix_jax.xla_cpu.conv2d_same` and with ``plain_conv2d_same``;
* ``groupnorm_sums``: one U-Net train step (forward and backward), with ``sum_over_pixels``
  and with ``plain_sum_over_pixels``;
* ``unet_init_compile``: compile and run of ``init_unet(fast=True)`` against
  ``jax.jit(model.init)``, in seconds (each on a fresh model, so nothing is cached).

Run it on an idle machine: the ratios are what matter, but they are noisy under load.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from fedmix_jax import models, xla_cpu  # noqa: E402
from fedmix_jax.losses import dice_loss  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 16, "U-Net base width")
flags.DEFINE_integer("image_size", 64, "square image side (px)")
flags.DEFINE_integer("batch_size", 8, "images per step")
flags.DEFINE_integer("steps", 4, "steps of the scanned local epoch")
flags.DEFINE_integer("repeats", 3, "timed repeats (interleaved on / off)")


@contextlib.contextmanager
def _patched(name: str, value):
    """Replace ``fedmix_jax.models.<name>`` (the U-Net's reference to a workaround)."""
    saved = getattr(models, name)
    setattr(models, name, value)
    try:
        yield
    finally:
        setattr(models, name, saved)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def _programs(model, params, x, t):
    tx = optax.adam(1e-3)
    opt = tx.init(params)
    w = jnp.ones((x.shape[0],), jnp.float32)

    def step(carry, _):
        p, o = carry
        loss, g = jax.value_and_grad(lambda p: dice_loss(model.apply({"params": p}, x), t, w))(p)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), loss

    epoch = jax.jit(lambda p, o: jax.lax.scan(step, (p, o), None, length=FLAGS.steps)[1])
    one_step = jax.jit(lambda p, o: step((p, o), None)[1])
    return (lambda: epoch(params, opt)), (lambda: one_step(params, opt))


def _compare(label, name, plain, which, model, params, x, t):
    """Times program ``which`` (0: scanned epoch, 1: one step) with and without a workaround."""
    on = _programs(model, params, x, t)[which]
    with _patched(name, plain):
        off = _programs(model, params, x, t)[which]
        first_off = _timed(off)         # traced and compiled with the plain form
    first_on = _timed(on)
    times = {"on": [], "off": []}
    for _ in range(FLAGS.repeats):
        times["on"].append(_timed(on))
        times["off"].append(_timed(off))
    on_s, off_s = np.median(times["on"]), np.median(times["off"])
    print(f"{label:<24}{on_s:>10.3f}{off_s:>10.3f}{off_s / on_s:>9.2f}x"
          f"   (first calls {first_on:.1f} / {first_off:.1f} s)")


def main(argv):
    del argv
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
          f"load {load}")
    s, b = FLAGS.image_size, FLAGS.batch_size
    model = models.UNet(width=FLAGS.width)
    params = models.init_unet(jax.random.key(0), model, (1, s, s, 1))
    x = jax.random.uniform(jax.random.key(1), (b, s, s, 1))
    t = (x > 0.5).astype(jnp.float32)
    print(f"U-Net width {FLAGS.width}, {s} px, batch {b}; median of {FLAGS.repeats}, seconds")
    print(f"{'workaround':<24}{'on':>10}{'off':>10}{'off/on':>10}")
    _compare(f"conv_backward_in_scan({FLAGS.steps})", "conv2d_same", xla_cpu.plain_conv2d_same,
             0, model, params, x, t)
    _compare("groupnorm_sums (step)", "sum_over_pixels", xla_cpu.plain_sum_over_pixels, 1,
             model, params, x, t)
    fresh = lambda: models.UNet(width=FLAGS.width + 2)  # noqa: E731 - a shape not compiled yet
    fast = _timed(lambda: models.init_unet(jax.random.key(2), fresh(), (1, s, s, 1)))
    plain = _timed(lambda: models.init_unet(jax.random.key(2), fresh(), (1, s, s, 1),
                                            fast=False))
    print(f"{'unet_init_compile':<24}{fast:>10.3f}{plain:>10.3f}{plain / fast:>9.2f}x")


if __name__ == "__main__":
    app.run(main)
