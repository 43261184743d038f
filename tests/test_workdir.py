"""An unusable workdir ends with exit code 2 and one line, never a traceback, and is not changed."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from fedmix_jax import rundir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_main import SYNTHETIC, TINY, run_main  # noqa: E402

ARGS = ["--config.num_rounds=1", *TINY]


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_workdir_is_a_file(tmp_path, capsys):
    wd = tmp_path / "run"
    wd.write_text("hello")
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    assert wd.read_text() == "hello"


def test_workdir_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("hello")
    assert run_main(SYNTHETIC, tmp_path / "f" / "run", *ARGS) == 2
    assert "which is a file" in _error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_workdir_read_only(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert run_main(SYNTHETIC, ro / "run", *ARGS) == 2
        assert "Permission denied" in _error_line(capsys)
    finally:
        ro.chmod(0o755)


def test_workdir_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    """What a read-only mount answers (simulated: the tests may run as root)."""
    real = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(rundir.os, "open", read_only)
    (tmp_path / "run").mkdir()
    assert run_main(SYNTHETIC, tmp_path / "run", *ARGS) == 2
    line = _error_line(capsys)
    assert "Read-only file system" in line and "writable --workdir" in line
    assert os.listdir(tmp_path / "run") == []


@pytest.mark.parametrize("content,says", [
    ('{"seed": 0, "model": {', "is not valid JSON"),
    ("[1, 2, 3]", "does not hold a config"),
    (b"\xff\xfe{}", "is not UTF-8"),
])
def test_config_json_that_is_not_a_config(content, says, tmp_path, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    path = wd / rundir.CONFIG_FILE
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    line = _error_line(capsys)
    assert str(path) in line and says in line
    assert sorted(os.listdir(wd)) == [rundir.CONFIG_FILE]


def test_resume_ignores_weak_fields_only_when_no_strategy_reads_them():
    # A run started before a change of fedmix_plus's defaults (weak.*) resumes under fedmix,
    # which never reads them; under fedmix_plus the same change is refused.
    from fedmix_jax.errors import ConfigMismatchError

    old = {"strategy": "fedmix", "seed": 0, "weak": {"tightness_inset": 0}}
    new = {"strategy": "fedmix", "seed": 0, "weak": {"tightness_inset": 9, "box_fit": 0.2}}
    rundir.check_config("wd", new, old, "config.json")
    with pytest.raises(ConfigMismatchError, match="weak.tightness_inset: 0 -> 9"):
        rundir.check_config("wd", dict(new, strategy="fedmix_plus"),
                            dict(old, strategy="fedmix_plus"), "config.json")
    with pytest.raises(ConfigMismatchError, match="strategy"):
        rundir.check_config("wd", dict(new, strategy="fedmix_plus"), old, "config.json")
    with pytest.raises(ConfigMismatchError, match="seed"):
        rundir.check_config("wd", dict(new, seed=1), old, "config.json")
