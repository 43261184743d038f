r"""Command line: train and evaluate one FedMix (or baseline) run.

    python -m fedmix_jax.main --config configs/synthetic.py
    python -m fedmix_jax.main --config configs/synthetic.py --config.num_rounds=50 \
        --config.strategy=fedavg_pixel --workdir runs/baseline
    python -m fedmix_jax.main --config configs/isic.py --config.data.data_dir=/data/HAM10000

Exit codes: 0 done; 1 training diverged (non-finite loss); 2 bad command line, config, data or
workdir, disk full, out of memory, workdir in use (one line on stderr, no traceback); 130
interrupted (rerun the same command to resume). Details: docs/main_job.md, what_can_go_wrong.md.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from fedmix_jax import console
from fedmix_jax.errors import RunError
from fedmix_jax.rundir import unique_path

USAGE = ("usage: python -m fedmix_jax.main --config configs/synthetic.py "
         "[--config.<field>=<value> ...] [--workdir DIR] [--quiet]")


def define_flags(argv: list[str]) -> flags.FlagValues:
    """A fresh flag set for ``argv`` (so main can be called repeatedly in one process)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "Path to a config file (configs/*.py); override fields with "
        "--config.<field>=<value>.", flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Output folder; rerunning with the same folder resumes. "
                        "Default: a fresh folder under runs/.", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress bar: one log line per round.", flag_values=fv)
    return fv


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:])


def print_help(usage: str, fv: flags.FlagValues, doc: str) -> int:
    """``--help``: the usage line, the command's description and its flags (exit code 0)."""
    print(f"{usage}\n\n{doc.strip()}\n\nflags:")
    for name in sorted(fv):
        flag = fv[name]
        if flag.name != name or name.startswith("config."):  # short names; config overrides
            continue
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        print(f"  --{name}: {flag.help}{default}")
    return 0


def config_path_from_argv(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config=PATH`` or ``--config PATH``), if any."""
    for i, arg in enumerate(argv[1:], start=1):
        if m := re.match(r"^--?config(=(.*))?$", arg):     # else the next argument, if any
            return m.group(2) if m.group(1) is not None else (argv[i + 1:] + [""])[0]
    return None


def check_config_file(path: str | None) -> str | None:
    """An error message when the config file is not given or not readable, else None."""
    if path is None:
        return f"error: --config is required\n{USAGE}"
    cfg_file = path.split(":", 1)[0]  # config_flags allows 'file.py:argument'
    if not cfg_file:
        return f"error: --config needs a file path\n{USAGE}"
    if not os.path.isfile(cfg_file):
        known = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
        hint = "" if not os.path.isdir(known) else "\navailable configs: " + ", ".join(
            os.path.join("configs", f) for f in sorted(os.listdir(known))
            if f.endswith(".py") and not f.startswith("_"))
        return f"error: config file not found: {cfg_file}{hint}"
    return None


def default_workdir(config_path: str, label: str) -> str:
    """A fresh ``runs/<config stem>-<label>-<YYYYmmdd-HHMMSS>[-k]`` (relative to the cwd)."""
    stem = os.path.splitext(os.path.basename(config_path.split(":", 1)[0]))[0]
    return unique_path(os.path.join("runs", f"{stem}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"))


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (``argv[0]`` is the program name); returns the exit code."""
    def start(fv):
        def job(workdir):
            from fedmix_jax import summary, train  # imports JAX: after the cheap checks

            print(summary.format_summary(train.train_and_evaluate(fv.config, workdir,
                                                                  quiet=fv.quiet)), flush=True)
        return job
    return run_cli(argv, USAGE, __doc__, define_flags, None, start)


def run_cli(argv: list[str] | None, usage: str, doc: str, define, label: str | None,
            start) -> int:
    """A command line (``main``, ``compare``): ``--help``; a bad config file or flag (also
    ``flags.Error`` / ``ValueError`` from ``start(fv)``): ``error:``, ``usage``, exit 2; then
    :func:`run_job` of ``start(fv)``'s job of the workdir (by default named after ``label``)."""
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        return print_help(usage, define(argv[:1]), doc)
    path = config_path_from_argv(argv)
    if err := check_config_file(path):
        print(err.replace(USAGE, usage), file=sys.stderr)
        return 2
    try:
        fv = define(argv)
        rest = fv(argv)
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])}")
        fv.config.to_dict()     # errors raised inside the config file surface here
        job = start(fv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e)
        if isinstance(e, (AttributeError, KeyError)):
            msg = (f"unknown config field {msg.strip(chr(34) + chr(39))!r} (check the "
                   "--config.<field> overrides)")
        print(f"error: {msg}\n{usage}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- an error raised by the config file itself
        print(f"error: could not load the config file {path}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2

    console.setup_logging()
    workdir = fv.workdir or default_workdir(path, label or str(fv.config.get("strategy", "run")))
    logging.info("workdir: %s", os.path.abspath(workdir))
    return run_job(lambda: job(workdir))


def run_job(job) -> int:
    """Run ``job()``: 0 when it returns; a :class:`~fedmix_jax.errors.RunError` is printed as
    one ``error:`` line and ends with its exit code (2, or 1 for divergence); Ctrl-C gives 130."""
    try:
        job()
    except RunError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        # reported: TensorStore's later writes of a failed save must not print asyncio's traces
        std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
