"""File and folder names that are not UTF-8: the build names the file in one line (fail) or skips
the sample (skip); the build command line and the main job never print a traceback."""

from __future__ import annotations

import os
import sys

import pytest

from fedmix_jax.data.real import BadInputError, build
from fedmix_jax.data.real.make_fixture import make_folders
from fedmix_jax.data.real.scanning import printable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_real import prepare  # noqa: E402
from test_main import BREAST, run_main  # noqa: E402
from hang_alarm import alarm_fixture  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="macOS names are UTF-8 only")


alarm = alarm_fixture(240)


def _tree(tmp_path, what):
    src = tmp_path / "src"
    make_folders(str(src), clients={"a": 6, "b": 6, "c": 6}, size=(40, 30))
    root = os.fsencode(src)
    if what == "file":
        for sub in (b"images", b"masks"):
            folder = root + b"/a/" + sub
            os.rename(folder + b"/img002.png", folder + b"/img\xff002.png")
    else:   # a client folder
        os.rename(root + b"/c", root + b"/c\xfe")
    return src


@pytest.mark.parametrize("what", ["file", "folder"])
def test_build_names_the_file_or_skips_it(tmp_path, what):
    src = _tree(tmp_path, what)
    with pytest.raises(BadInputError, match="not UTF-8") as e:
        prepare("folders", src, tmp_path / "cache")
    msg = str(e.value)
    assert msg.encode("utf-8") and ("img\\xff002" if what == "file" else "c\\xfe") in msg
    if what == "file":
        ok = prepare("folders", src, tmp_path / "cache_skip", on_bad_input="skip")
        assert len(ok.metadata["skipped"]) == 1
        assert "img\\xff002" in ok.metadata["skipped"][0]["path"]
        assert sum(ok.metadata["found"].values()) == 17


def test_build_cli_one_line(tmp_path, capsys):
    src = _tree(tmp_path, "file")
    code = build.main(["build", "--dataset", "folders", "--manual_dir", str(src),
                       "--cache_dir", str(tmp_path / "cache"), "--image_size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "img\\xff002.png" in [ln for ln in err.splitlines() if ln.startswith("error:")][0]


def test_main_job_names_the_file(tmp_path, capsys):
    src = _tree(tmp_path, "file")
    code = run_main(BREAST, tmp_path / "run", "--config.data.name=folders",
                    "--config.data.clients=('a','b','c')",
                    f"--config.data.data_dir={src}", f"--config.data.cache_dir={tmp_path / 'c'}",
                    "--config.data.image_size=32", "--config.num_rounds=1",
                    "--config.model.width=4", "--config.model.depth=2",
                    "--config.train.batch_size=4")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1
    assert "img\\xff002.png" in lines[0]


def test_printable():
    assert printable("plain/é.png") == "plain/é.png"
    assert printable(os.fsdecode(b"a/\xff.png")) == "a/\\xff.png"
