"""Build a real dataset's cache once (TensorFlow-free TFDS ``array_record``), from a shell.

Examples::

    # HAM10000 (data_dir holds HAM10000_metadata.csv, the two image folders and the masks)
    python -m fedmix_jax.data.real.build --dataset ham10000 --manual_dir /data/HAM10000 \\
        --data_dir ~/fedmix_data --image_size 256 --channels 1

    # breast ultrasound (Dataset_BUSI_with_GT/, BUSIS/, UDIAT/ under /data/breast)
    python -m fedmix_jax.data.real.build --dataset breast --manual_dir /data/breast

    # your own folders, skipping (and listing) bad files instead of stopping at the first
    python -m fedmix_jax.data.real.build --dataset folders --manual_dir /data/my_fed \\
        --on_bad_input skip

``--manual_dir`` is what a training config calls ``--config.data.data_dir`` and ``--data_dir`` is
``--config.data.cache_dir`` (TFDS's names). The build uses the same code path as
:func:`fedmix_jax.data.real.load_federation_from_config`; a run with the same options then starts
from the cache. ``--load`` also reads the records back and prints the federation summary.
"""

from __future__ import annotations

import argparse
import sys
import time

from fedmix_jax.data.real.errors import BadInputError, DatasetNotFoundError
from fedmix_jax.data.real.loader import DEFAULT_CACHE_DIR, default_data_config, \
    load_federation_from_config, prepare_dataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fedmix_jax.data.real.build",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dataset", required=True, choices=("ham10000", "breast", "folders", "retouch"))
    p.add_argument("--manual_dir", required=True, help="the manually downloaded files "
                   "(= --config.data.data_dir)")
    p.add_argument("--data_dir", default=DEFAULT_CACHE_DIR, help="where the built records go "
                   "(= --config.data.cache_dir; default %(default)s)")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--channels", type=int, default=1, choices=(1, 3))
    p.add_argument("--seed", type=int, default=0, help="split / box seed")
    p.add_argument("--test_fraction", type=float, default=0.2)
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--on_bad_input", default="fail", choices=("fail", "skip"))
    p.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    p.add_argument("--load", action="store_true", help="also load the federation and print it")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace):
    return default_data_config(
        a.dataset, data_dir=a.manual_dir, cache_dir=a.data_dir, image_size=a.image_size,
        channels=a.channels, seed=a.seed, test_fraction=a.test_fraction,
        val_fraction=a.val_fraction, on_bad_input=a.on_bad_input, rebuild=a.rebuild)


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = config_from_args(a)
    t0 = time.time()
    try:
        prepared = prepare_dataset(cfg)
    except (DatasetNotFoundError, BadInputError) as e:
        print(f"error (--manual_dir here is --config.data.data_dir): {e}", file=sys.stderr)
        return 2
    counts = {sp: sum(c.values()) for sp, c in prepared.metadata["counts"].items()}
    print(f"{prepared.path}: {'built' if prepared.built_now else 'already cached'} "
          f"({time.time() - t0:.1f} s); clients {prepared.clients}; examples {counts}; "
          f"{len(prepared.metadata['skipped'])} file(s) skipped")
    if a.load:
        cfg.rebuild = False
        load_federation_from_config(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
