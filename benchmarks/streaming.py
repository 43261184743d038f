"""Throughput of the streamed round against the in-memory round, same federation, same run.

    python benchmarks/streaming.py [--clients 3 --per_client 60 --image_size 64 --width 8
                                    --depth 3 --batch_size 8 --block_steps 4 --repeats 3
                                    --json streaming.json]

The federation is a folder federation in the real datasets' layout
(:func:`fedmix_jax.data.real.make_fixture.make_folders`, client 0 pixel masks, the others boxes)
built into the array_record cache once (under ``--workdir``, default a temporary folder). Four
variants run FedMix rounds from the same initial state, compiled and warmed up first, then timed
interleaved (``benchmarks/harness.py``: repeat r of every variant before repeat r + 1 of any):

* ``memory_map`` / ``memory_loop``: the in-memory round (the training split on the device once;
  executors ``map`` and ``loop``);
* ``stream_host``: :class:`fedmix_jax.streaming.StreamedRound` over the split in host memory
  (:class:`~fedmix_jax.data.streamed_sources.ArraySource`);
* ``stream_cache``: the same over the array_record cache
  (:class:`~fedmix_jax.data.streamed_sources.ArrayRecordSource`, records decoded on every read).

It prints seconds per round and client-images/s (valid training samples of all clients / round
time), and whether each streamed variant's state after all its rounds is bit-identical to
``memory_loop``'s (same rounds, same keys).
"""
from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
import fedmix_jax as fm  # noqa: E402
from fedmix_jax import streaming as S
from fedmix_jax.data import streamed_sources as D  # noqa: E402
from fedmix_jax.models import UNet  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("clients", 3, "clients")
flags.DEFINE_integer("per_client", 60, "images per client (all splits; 80% train)")
flags.DEFINE_integer("image_size", 64, "square image size of the cache")
flags.DEFINE_integer("width", 8, "U-Net width")
flags.DEFINE_integer("depth", 3, "U-Net depth")
flags.DEFINE_integer("batch_size", 8, "local batch size")
flags.DEFINE_integer("block_steps", 4, "local steps per streamed block")
flags.DEFINE_integer("repeats", 3, "timed rounds per variant (interleaved)")
flags.DEFINE_integer("warmup", 1, "untimed rounds after the compiling one")
flags.DEFINE_string("workdir", None, "where the fixture tree and its cache go (default: temp)")
flags.DEFINE_string("json", None, "write the results here")


def build(workdir: str):
    from fedmix_jax.data.real import default_data_config, load_federation_from_config
    from fedmix_jax.data.real.make_fixture import make_folders

    src = os.path.join(workdir, "src")
    clients = {f"site{c}": FLAGS.per_client for c in range(FLAGS.clients)}
    if not os.path.isdir(src):
        make_folders(src, clients=clients, size=(FLAGS.image_size + 16, FLAGS.image_size + 8))
    levels = tuple("pixel" if c == 0 else "box" for c in range(FLAGS.clients))
    data = default_data_config("folders", data_dir=src, cache_dir=os.path.join(workdir, "cache"),
                               image_size=FLAGS.image_size, levels=levels, val_fraction=0.1,
                               test_fraction=0.1)
    return load_federation_from_config(data, verbose=False), \
        D.open_streamed_federation(data, verbose=False)


class Rounds:
    """A zero-argument callable: one round of ``round_fn`` from the state it holds."""

    def __init__(self, round_fn, state, *args):
        self.round_fn, self.state, self.args = round_fn, state, args

    def __call__(self):
        self.state, metrics = self.round_fn(self.state, *self.args)
        return metrics


def main(_):
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="fedmix_streaming_")
    fed, streamed = build(workdir)
    model = UNet(width=FLAGS.width, depth=FLAGS.depth)
    num_images = int(fed.train.valid.sum())
    print(f"federation: {fed.num_clients} clients, {num_images} training images of "
          f"{FLAGS.image_size}x{FLAGS.image_size} (N = {fed.train.max_samples} padded), training "
          f"split {D.split_bytes(fed.train) / 2**20:.1f} MiB ({fed.train.images.dtype} images); "
          f"{jax.default_backend()}, block of {FLAGS.block_steps} steps x batch "
          f"{FLAGS.batch_size}")
    base = dict(strategy=fm.get_strategy("fedmix"), batch_size=FLAGS.batch_size, crop=None)
    shape = (FLAGS.image_size, FLAGS.image_size, fed.train.images.shape[-1])
    state = fm.init_state(model, jax.random.PRNGKey(0), shape, fed.num_clients,
                         fm.RoundConfig(**base))
    copy = lambda: jax.tree.map(jnp.copy, state)  # noqa: E731
    train = jax.device_put(fed.train)
    options = S.StreamOptions(block_steps=FLAGS.block_steps)
    loop_cfg = fm.RoundConfig(executor="loop", **base)
    variants = {
        "memory_map": Rounds(fm.make_round_fn(model, fm.RoundConfig(executor="map", **base)),
                             copy(), train),
        "memory_loop": Rounds(fm.make_round_fn(model, loop_cfg), copy(), train),
        "stream_host": Rounds(S.StreamedRound(model, loop_cfg, D.ArraySource(fed.train), options),
                              copy()),
        "stream_cache": Rounds(S.StreamedRound(model, loop_cfg, streamed.train, options), copy()),
    }
    rounds = dict(variants)
    res = harness.time_variants(variants, FLAGS.repeats, FLAGS.warmup, num_images)
    ref = jax.device_get(rounds["memory_loop"].state)
    print(f"\n{'variant':<14}{'s/round':>10}{'[min, max]':>18}{'client-img/s':>14}"
          f"{'compile s':>11}  same state as memory_loop")
    for name, row in res.items():
        if "seconds" not in row:
            print(f"{name:<14} {row.get('error', 'no timing')}")
            continue
        s = row["seconds"]
        same = all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(jax.device_get(rounds[name].state)), jax.tree.leaves(ref)))
        row["bit_identical_to_memory_loop"] = bool(same)
        spread = f"[{s['min']:.3f}, {s['max']:.3f}]"
        print(f"{name:<14}{s['median']:>10.3f}{spread:>18}"
              f"{row['client_images_per_s']:>14.1f}{row['compile_s']:>11.1f}  {same}")
    if FLAGS.json:
        import json

        with open(FLAGS.json, "w") as f:
            json.dump(harness.jsonable(dict(
                federation=dict(clients=fed.num_clients, train_images=num_images,
                                image_size=FLAGS.image_size, bytes=D.split_bytes(fed.train)),
                flags={k: FLAGS[k].value for k in ("width", "depth", "batch_size",
                                                   "block_steps", "repeats", "warmup")},
                environment=harness.environment(), results=res)), f, indent=1)


if __name__ == "__main__":
    app.run(main)
