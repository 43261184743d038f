"""Build a real dataset's cache once (TensorFlow-free TFDS ``array_record``), from a shell::

    python -m fedmix_jax.data.real.build --dataset ham10000 --manual_dir /data/HAM10000 \\
        --cache_dir ~/fedmix_data --image_size 256 --channels 1 [--on_bad_input skip]

``--manual_dir`` is the manual download (``--config.data.data_dir`` of a training config),
``--cache_dir`` where the records go (``--config.data.cache_dir``); a run with the same options
then starts from the cache. ``--load`` also reads it back and prints the federation. Exit codes:
0 built (or already cached); 2 bad flags, a missing download, a bad input file or an unwritable
cache folder (one line, no traceback).
"""

from __future__ import annotations

import sys
import time

from absl import flags

USAGE = ("usage: python -m fedmix_jax.data.real.build --dataset NAME --manual_dir DOWNLOAD "
         "[--cache_dir CACHE] [--image_size 256] [--channels 1|3] [--on_bad_input fail|skip] "
         "[--box_mode component|enclosing] [--drop_empty_slices] [--rebuild] [--load]")

RENAMED = {"data_dir": "--data_dir is not a flag of build: the manual download is --manual_dir "
                       "(--config.data.data_dir of a training config) and the built cache is "
                       "--cache_dir (--config.data.cache_dir)"}


def define_flags() -> flags.FlagValues:
    """A fresh flag set (so main can be called repeatedly in one process)."""
    from fedmix_jax.data.real.settings import DEFAULT_CACHE_DIR
    from fedmix_jax.data.sources import REAL

    fv = flags.FlagValues()
    flags.DEFINE_enum("dataset", None, list(REAL), "Which dataset to build.", flag_values=fv)
    flags.DEFINE_string("manual_dir", None, "The manually downloaded files (what a training "
                        "config calls --config.data.data_dir).", flag_values=fv)
    flags.DEFINE_string("cache_dir", DEFAULT_CACHE_DIR, "Where the built records go "
                        "(--config.data.cache_dir).", flag_values=fv)
    flags.DEFINE_integer("image_size", 256, "Side of the square images.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_enum("channels", "1", ["1", "3"], "Grey (1) or RGB (3).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Split / box seed.", flag_values=fv)
    flags.DEFINE_float("test_fraction", 0.2, "Test share of each client.", lower_bound=0.0,
                       upper_bound=1.0, flag_values=fv)
    flags.DEFINE_float("val_fraction", 0.1, "Validation share of each client.", lower_bound=0.0,
                       upper_bound=1.0, flag_values=fv)
    flags.DEFINE_enum("on_bad_input", "fail", ["fail", "skip"], "Stop at the first bad file, "
                      "or skip (and list) bad files.", flag_values=fv)
    flags.DEFINE_enum("box_mode", "component", ["component", "enclosing"], "A box per "
                      "connected component, or one enclosing box per class (the reference).",
                      flag_values=fv)
    flags.DEFINE_bool("drop_empty_slices", False, "RETOUCH: leave out B-scans without fluid "
                      "(configs/retouch.py sets it, as the reference).", flag_values=fv)
    flags.DEFINE_bool("rebuild", False, "Rebuild even if cached.", flag_values=fv)
    flags.DEFINE_bool("load", False, "Also load the federation and print it.", flag_values=fv)
    return fv


def parse(argv: list[str]) -> flags.FlagValues:
    """The parsed flags of a full ``argv`` (``argv[0]`` is the program); raises flags.Error."""
    for arg in argv[1:]:
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and name in RENAMED:
            raise flags.Error(RENAMED[name])
    fv = define_flags()
    rest = fv(argv)
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])}")
    for name in ("dataset", "manual_dir"):
        if not fv[name].value:
            raise flags.Error(f"--{name} is required")
    return fv


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (``argv[0]`` is the program name); returns the exit code."""
    from fedmix_jax import main as main_lib

    argv = list(sys.argv if argv is None else argv)
    if main_lib.wants_help(argv):
        return main_lib.print_help(USAGE, define_flags(), __doc__)
    try:
        fv = parse(argv)
    except flags.Error as e:
        print(f"error: {e}\n{USAGE}", file=sys.stderr)
        return 2
    from fedmix_jax.console import setup_logging
    from fedmix_jax.data.real.errors import (DATA_DIR_FLAG, BadInputError, CacheDamagedError,
                                             DatasetNotFoundError)
    from fedmix_jax.data.real.loader import (default_data_config, load_federation_from_config,
                                             prepare_dataset)
    from fedmix_jax.errors import describe_os_error

    setup_logging()
    cfg = default_data_config(
        fv.dataset, data_dir=fv.manual_dir, cache_dir=fv.cache_dir, image_size=fv.image_size,
        channels=int(fv.channels), seed=fv.seed, test_fraction=fv.test_fraction,
        val_fraction=fv.val_fraction, on_bad_input=fv.on_bad_input, rebuild=fv.rebuild,
        box_mode=fv.box_mode, drop_empty_slices=fv.drop_empty_slices)
    t0 = time.time()
    try:
        prepared = prepare_dataset(cfg)
        counts = {sp: sum(c.values()) for sp, c in prepared.metadata["counts"].items()}
        print(f"{prepared.path}: {'built' if prepared.built_now else 'already cached'} "
              f"({time.time() - t0:.1f} s); clients {prepared.clients}; examples {counts}; "
              f"{len(prepared.metadata['skipped'])} file(s) skipped")
        if fv.load:
            cfg.rebuild = False
            load_federation_from_config(cfg)
    except (DatasetNotFoundError, BadInputError, CacheDamagedError) as e:  # worded for main
        print(f"error: {str(e).replace(DATA_DIR_FLAG, '--manual_dir')}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: could not build the cache in {fv.cache_dir}: {describe_os_error(e)}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
