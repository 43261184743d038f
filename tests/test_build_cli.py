"""The cache-building command line (absl flags): one name per folder, errors in one message."""

from __future__ import annotations

from fedmix_jax.data.real import build


def test_data_dir_is_refused_with_the_two_names(tmp_path, capsys):
    code = build.main(["build", "--dataset", "breast", "--manual_dir", str(tmp_path),
                       f"--data_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2 and "--manual_dir" in err and "--cache_dir" in err
    assert not (tmp_path / "cache").exists()


def test_required_flags_and_help(tmp_path, capsys):
    assert build.main(["build", "--manual_dir", str(tmp_path)]) == 2
    assert "--dataset is required" in capsys.readouterr().err
    assert build.main(["build", "--dataset", "breast"]) == 2
    assert "--manual_dir is required" in capsys.readouterr().err
    assert build.main(["build", "--dataset", "nope", "--manual_dir", str(tmp_path)]) == 2
    assert build.main(["build", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--manual_dir" in out and "--cache_dir" in out and "--data_dir" not in out.split(
        "flags:")[1]


def test_missing_download_names_manual_dir(tmp_path, capsys):
    code = build.main(["build", "--dataset", "breast", "--manual_dir", str(tmp_path / "none"),
                       "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "--manual_dir=" in err and "--config.data.data_dir" not in err
    assert "Traceback" not in err
