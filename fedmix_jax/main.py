r"""Command line: train and evaluate one FedMix (or baseline) run.

    python -m fedmix_jax.main --config configs/synthetic.py
    python -m fedmix_jax.main --config configs/synthetic.py --config.num_rounds=50 \
        --config.strategy=fedavg_pixel --workdir runs/baseline
    python -m fedmix_jax.main --config configs/isic.py --config.data.data_dir=/data/HAM10000

Flags: ``--config`` (a config file; any field can be overridden with ``--config.<field>=<value>``),
``--workdir`` (default: a fresh folder ``runs/<config>-<strategy>-<time>``, printed at the start;
rerunning with an existing workdir resumes it) and ``--quiet`` (log lines instead of a progress
bar). Exit codes: 0 done; 1 training diverged (non-finite loss); 2 bad command line, config, data
or workdir, disk full, out of memory, workdir in use by another run (one line on stderr, no
traceback); 130 interrupted (the last checkpoint is intact: rerun the same command to resume).
What the job does on each fault: ``docs/what_can_go_wrong.md``.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

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
        m = re.match(r"^--?config(=(.*))?$", arg)
        if m:
            if m.group(1) is not None:
                return m.group(2)
            return argv[i + 1] if i + 1 < len(argv) else ""
    return None


def check_config_file(path: str | None) -> str | None:
    """An error message when the config file is not given or not readable, else None."""
    if path is None:
        return f"error: --config is required\n{USAGE}"
    cfg_file = path.split(":", 1)[0]  # config_flags allows 'file.py:argument'
    if not cfg_file:
        return f"error: --config needs a file path\n{USAGE}"
    if not os.path.isfile(cfg_file):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        known = os.path.join(here, "configs")
        hint = ""
        if os.path.isdir(known):
            hint = "\navailable configs: " + ", ".join(
                os.path.join("configs", f) for f in sorted(os.listdir(known))
                if f.endswith(".py") and not f.startswith("_"))
        return f"error: config file not found: {cfg_file}{hint}"
    return None


def parse(argv: list[str], fv: flags.FlagValues | None = None) -> flags.FlagValues:
    """``fv`` (default: :func:`define_flags`) parsed from a full argv, its config loaded (so that
    errors inside the config file surface here); raises ``SystemExit``-free errors."""
    fv = define_flags(argv) if fv is None else fv
    rest = fv(argv)
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])}")
    fv.config.to_dict()
    return fv


def default_workdir(config_path: str, label: str) -> str:
    """A fresh ``runs/<config stem>-<label>-<YYYYmmdd-HHMMSS>[-k]`` (relative to the cwd)."""
    from fedmix_jax.rundir import unique_path

    stem = os.path.splitext(os.path.basename(config_path.split(":", 1)[0]))[0]
    return unique_path(os.path.join("runs", f"{stem}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"))


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (``argv[0]`` is the program name); returns the exit code."""
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        return print_help(USAGE, define_flags(argv[:1]), __doc__)
    path = config_path_from_argv(argv)
    err = check_config_file(path)
    if err:
        print(err, file=sys.stderr)
        return 2
    try:
        fv = parse(argv)
        config, workdir, quiet = fv.config, fv.workdir, fv.quiet
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e)
        if isinstance(e, (AttributeError, KeyError)):
            msg = (f"unknown config field {msg.strip(chr(34) + chr(39))!r} (check the "
                   "--config.<field> overrides)")
        print(f"error: {msg}\n{USAGE}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- an error raised by the config file itself
        print(f"error: could not load the config file {path}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2

    from fedmix_jax import console

    console.setup_logging()
    workdir = workdir or default_workdir(path, str(config.get("strategy", "run")))
    logging.info("workdir: %s", os.path.abspath(workdir))

    def job():
        from fedmix_jax import summary, train  # imports JAX: after the cheap checks

        print(summary.format_summary(train.train_and_evaluate(config, workdir, quiet=quiet)),
              flush=True)
    return run_job(job)


def run_job(job) -> int:
    """Run ``job()``: 0 when it returns; a :class:`~fedmix_jax.errors.RunError` is printed as
    one ``error:`` line and ends with its exit code (2, or 1 for divergence); Ctrl-C gives 130."""
    from fedmix_jax.errors import RunError

    try:
        job()
    except RunError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        # The failure was reported in that line: writes of the same failed save that TensorStore
        # finishes later must not print asyncio's "Future exception was never retrieved" traces.
        std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
