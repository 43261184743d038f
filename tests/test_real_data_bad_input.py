"""Bad input: each case gives a clear error naming the offending file, or an explicit, counted,
logged skip with on_bad_input='skip' -- never a silent drop -- and never a poisoned cache."""

from __future__ import annotations

import logging
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from fedmix_jax.data.real import BadInputError, load_federation_from_config
from fedmix_jax.data.real.make_fixture import make_breast, make_folders, make_ham10000
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ helpers
from fixtures_real import cfg, prepare, records  # noqa: E402

N = 32


@pytest.fixture
def ham(tmp_path):
    info = make_ham10000(str(tmp_path / "ham"), num_images=N, size=(40, 30))
    return tmp_path / "ham", info


def all_ids(prepared):
    return {r["id"] for sp in ("train", "validation", "test") for r in records(prepared, sp)}


def assert_fails_then_skips(data_dir, tmp_path, offending, match, name="ham10000", lost=1,
                            caplog=None, **kw):
    """'fail' raises naming ``offending``; leaves no cache; 'skip' builds without it, counted."""
    with pytest.raises(BadInputError, match=match) as e:
        prepare(name, data_dir, tmp_path / "cache", **kw)
    assert str(offending) in str(e.value)
    assert e.value.path == str(offending)
    cfg_root = tmp_path / "cache"
    leftovers = [os.path.join(d, f) for d, _, fs in os.walk(cfg_root) for f in fs
                 if "array_record" in f or f == "dataset_info.json"]
    assert not leftovers, leftovers                   # the failed build left nothing to read
    if caplog is not None:
        caplog.clear()
    p = prepare(name, data_dir, tmp_path / "cache", on_bad_input="skip", **kw)
    assert p.built_now and len(p.metadata["skipped"]) == lost
    assert str(offending) in p.metadata["skipped"][0]["reason"]
    if caplog is not None:
        logged = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
        assert len(logged) == lost and str(offending) in logged[0]
    return p


# --------------------------------------------------------------------------- image files


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_image(ham, tmp_path, how, caplog):
    root, info = ham
    bad = info["images"][3]
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write({"garbage": b"this is not a jpeg" * 10, "truncated": data[: len(data) // 2],
                 "empty": b""}[how])
    caplog.set_level(logging.WARNING, logger="fedmix_jax.data.real")
    p = assert_fails_then_skips(root, tmp_path, bad, "cannot read image", caplog=caplog)
    ids = all_ids(p)
    assert len(ids) == N - 1 and info["rows"][3]["image_id"] not in ids
    assert sum(p.metadata["found"].values()) == N    # found, then explicitly skipped


def test_mask_size_differs_from_image(ham, tmp_path):
    root, info = ham
    bad = info["masks"][5]
    Image.fromarray(np.zeros((30, 41), np.uint8)).save(bad)
    assert_fails_then_skips(root, tmp_path, bad, "mask size differs")


@pytest.mark.parametrize("kind", ["gradient", "label_map"])
def test_non_binary_mask_rejected(ham, tmp_path, kind):
    root, info = ham
    bad = info["masks"][2]
    if kind == "gradient":
        arr = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    else:
        arr = np.zeros((30, 40), np.uint8)
        arr[5:15, 5:15], arr[18:25, 20:30] = 1, 2
    Image.fromarray(arr).save(bad)
    assert_fails_then_skips(root, tmp_path, bad, "not binary")


def test_anti_aliased_mask_is_thresholded(ham, tmp_path):
    root, info = ham
    arr = np.zeros((30, 40), np.uint8)
    arr[8:22, 10:30] = 255
    arr[7, 10:30] = 100          # anti-aliased edge rows: < 5% of the pixels
    arr[22, 10:30] = 200
    Image.fromarray(arr).save(info["masks"][0])
    p = prepare("ham10000", root, tmp_path / "cache")
    assert p.metadata["skipped"] == []
    r = next(r for sp in ("train", "validation", "test") for r in records(p, sp)
             if r["id"] == info["rows"][0]["image_id"])
    assert set(np.unique(r["mask"])) == {0, 1}


# --------------------------------------------------------------------------- pairing and ids


def test_image_without_mask_ham(ham, tmp_path):
    root, info = ham
    os.remove(info["masks"][7])
    assert_fails_then_skips(root, tmp_path, info["images"][7], "image with no mask")


def test_image_without_mask_busi(tmp_path):
    make_breast(str(tmp_path / "b"), num_busi=(4, 3, 3))
    img = tmp_path / "b" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2).png"
    os.remove(tmp_path / "b" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2)_mask.png")
    assert_fails_then_skips(tmp_path / "b", tmp_path, img, "image with no mask", name="breast")


def test_image_without_mask_folders(tmp_path):
    info = make_folders(str(tmp_path / "f"), clients={"a": 5, "b": 4}, no_mask={"a": ["img001"]})
    assert_fails_then_skips(tmp_path / "f", tmp_path, info["a"]["img001"][0],
                            "image with no mask", name="folders")


def test_mask_without_image(tmp_path):
    make_breast(str(tmp_path / "b"), num_busi=(4, 3, 3))
    orphan = tmp_path / "b" / "Dataset_BUSI_with_GT" / "benign" / "benign (9)_mask.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(orphan)
    assert_fails_then_skips(tmp_path / "b", tmp_path, orphan, "mask with no image", name="breast")
    orphan2 = tmp_path / "b" / "UDIAT" / "GT" / "999999.png"
    os.remove(orphan)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(orphan2)
    shutil.rmtree(tmp_path / "cache")
    assert_fails_then_skips(tmp_path / "b", tmp_path, orphan2, "mask with no image",
                            name="breast")


def test_duplicate_image_file_ham(ham, tmp_path):
    root, info = ham
    src = info["images"][1]                                   # in part_1
    dup = str(root / "HAM10000_images_part_2" / os.path.basename(src))
    shutil.copy(src, dup)
    p = assert_fails_then_skips(root, tmp_path, dup, "duplicate image id", lost=1)
    assert len(all_ids(p)) == N                               # the first copy is kept


def test_duplicate_row_in_csv(ham, tmp_path):
    root, info = ham
    csv_path = root / "HAM10000_metadata.csv"
    lines = open(csv_path).read().splitlines()
    with open(csv_path, "w") as f:
        f.write("\n".join(lines + [lines[4]]) + "\n")
    p = assert_fails_then_skips(root, tmp_path, csv_path, "duplicate image_id")
    assert "lines" in p.metadata["skipped"][0]["reason"]


def test_duplicate_stem_folders(tmp_path):
    info = make_folders(str(tmp_path / "f"), clients={"a": 5, "b": 4})
    ipath = info["a"]["img002"][0]
    dup = ipath.replace(".png", ".bmp")
    Image.open(ipath).save(dup)
    second = sorted([ipath, dup])[1]                  # the first in sorted order is kept
    assert_fails_then_skips(tmp_path / "f", tmp_path, second, "duplicate image id",
                            name="folders")


def test_image_listed_in_csv_missing(ham, tmp_path):
    root, info = ham
    os.remove(info["images"][9])
    with pytest.raises(BadInputError) as e:
        prepare("ham10000", root, tmp_path / "cache")
    assert info["rows"][9]["image_id"] in str(e.value)
    assert str(root / "HAM10000_metadata.csv") in str(e.value)
    p = prepare("ham10000", root, tmp_path / "cache", on_bad_input="skip")
    assert len(p.metadata["skipped"]) == 1 and len(all_ids(p)) == N - 1


def test_csv_missing_columns(ham, tmp_path):
    root, _ = ham
    csv_path = root / "HAM10000_metadata.csv"
    lines = open(csv_path).read().splitlines()
    with open(csv_path, "w") as f:
        f.write("\n".join([lines[0].replace("dataset", "source")] + lines[1:]) + "\n")
    with pytest.raises(BadInputError, match="dataset") as e:
        prepare("ham10000", root, tmp_path / "cache")
    assert str(csv_path) in str(e.value)


# --------------------------------------------------------------------------- folders CSVs


@pytest.mark.parametrize("case", ["bad_label", "bad_level", "bad_box", "unknown_stem",
                                  "box_outside", "box_level_without_boxes"])
def test_folders_csv_errors(tmp_path, case):
    kw = {}
    if case == "bad_label":
        kw["labels"] = {"a": {"img001": "maybe"}}
    elif case == "bad_level":
        kw["levels"] = {"a": {"img001": "polygon"}}
    elif case == "bad_box":
        kw["boxes"] = {"a": {"img001": [[10, 5, 3, 8]]}}
    elif case == "unknown_stem":
        kw["labels"] = {"a": {"img777": 1}}
    elif case == "box_outside":
        kw["boxes"] = {"a": {"img001": [[10, 5, 45, 8]]}}      # image is 40 px wide
    else:
        kw["levels"] = {"a": {"img001": "box"}}
        kw["no_mask"] = {"a": ["img001"]}
    info = make_folders(str(tmp_path / "f"), clients={"a": 6, "b": 4}, **kw)
    if case == "box_level_without_boxes":
        offending, match = info["a"]["img001"][0], "boxes.csv"
    else:
        fname = {"bad_label": "labels.csv", "bad_level": "levels.csv", "bad_box": "boxes.csv",
                 "unknown_stem": "labels.csv", "box_outside": "boxes.csv"}[case]
        offending = str(tmp_path / "f" / "a" / fname)
        match = {"bad_label": "maybe", "bad_level": "polygon", "bad_box": "x_min <= x_max",
                 "unknown_stem": "img777", "box_outside": "outside"}[case]
    assert_fails_then_skips(tmp_path / "f", tmp_path, offending, match, name="folders")


# --------------------------------------------------------------------------- empty clients


def test_client_left_empty_after_skipping(tmp_path, caplog):
    info = make_folders(str(tmp_path / "f"), clients={"a": 5, "b": 3})
    for stem, (ipath, _, _) in info["b"].items():
        with open(ipath, "wb") as f:
            f.write(b"broken")
    with pytest.raises(BadInputError, match="cannot read image") as e:
        prepare("folders", tmp_path / "f", tmp_path / "cache")
    assert "/b/images/" in str(e.value)
    caplog.set_level(logging.WARNING, logger="fedmix_jax.data.real")
    with pytest.raises(BadInputError, match="client 'b' is left with no") as e:
        prepare("folders", tmp_path / "f", tmp_path / "cache", on_bad_input="skip")
    assert "bad file(s) have been skipped" in str(e.value)
    assert len([r for r in caplog.records if "skipping" in r.getMessage()]) >= 1
    cache_files = [f for _, _, fs in os.walk(tmp_path / "cache") for f in fs
                   if "array_record" in f]
    assert not cache_files


def test_client_too_small(tmp_path):
    make_folders(str(tmp_path / "f"), clients={"a": 5, "tiny": 2})
    with pytest.raises(BadInputError, match="client 'tiny'"):
        prepare("folders", tmp_path / "f", tmp_path / "cache")


def test_folder_without_images_is_reported(tmp_path):
    make_folders(str(tmp_path / "f"), clients={"a": 5, "b": 4})
    os.makedirs(tmp_path / "f" / "notes")
    p = prepare("folders", tmp_path / "f", tmp_path / "cache")
    assert p.clients == ["a", "b"]
    assert any("notes" in w for w in p.metadata["warnings"])


def test_unknown_client_in_config(tmp_path):
    make_folders(str(tmp_path / "f"), clients={"a": 5, "b": 4})
    with pytest.raises(ValueError, match=r"unknown client\(s\) \['c'\]"):
        load_federation_from_config(cfg("folders", tmp_path / "f", tmp_path / "cache",
                                        clients=["a", "c"]), verbose=False)


# --------------------------------------------------------------------------- numbers in CSVs


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1e300", "99999999999"])
def test_non_finite_or_huge_box_coordinates(tmp_path, value):
    info = make_folders(str(tmp_path / "f"), clients={"a": 6, "b": 4},
                        boxes={"a": {"img001": [[1, 2, value, 8]]}})
    offending = str(tmp_path / "f" / "a" / "boxes.csv")
    assert_fails_then_skips(tmp_path / "f", tmp_path, offending,
                            "finite|coordinates must be in", name="folders")
    assert info


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "2"])
def test_non_finite_or_odd_labels(tmp_path, value):
    make_folders(str(tmp_path / "f"), clients={"a": 6, "b": 4},
                 labels={"a": {"img001": value}})
    assert_fails_then_skips(tmp_path / "f", tmp_path, str(tmp_path / "f" / "a" / "labels.csv"),
                            "is not 0/1", name="folders")


def test_short_csv_row_is_a_skippable_bad_row(tmp_path):
    make_folders(str(tmp_path / "f"), clients={"a": 6, "b": 4}, levels={"a": {"img001": "pixel"}})
    path = tmp_path / "f" / "a" / "levels.csv"
    with open(path, "a") as f:
        f.write("img002\n")
    assert_fails_then_skips(tmp_path / "f", tmp_path, str(path), "expected 2 columns",
                            name="folders")


# --------------------------------------------------------------------------- text encodings


@pytest.mark.parametrize("which", ["ham", "labels"])
def test_csv_not_utf8_is_named_in_both_modes(tmp_path, which):
    if which == "ham":
        make_ham10000(str(tmp_path / "d"), num_images=8, size=(40, 30))
        path, name = tmp_path / "d" / "HAM10000_metadata.csv", "ham10000"
    else:
        make_folders(str(tmp_path / "d"), clients={"a": 6, "b": 4},
                     labels={"a": {"img001": "lesion"}})
        path, name = tmp_path / "d" / "a" / "labels.csv", "folders"
    text = path.read_text()
    path.write_bytes(text.replace("lesion", "l\xe9sion").encode("latin-1")
                     if which == "labels" else text.encode("utf-16"))
    for mode in ("fail", "skip"):
        with pytest.raises(BadInputError, match="is not UTF-8 text") as e:
            prepare(name, tmp_path / "d", tmp_path / "cache", on_bad_input=mode)
        assert e.value.path == str(path) and str(path) in str(e.value)


# --------------------------------------------------------------------------- special files, links


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if a FIFO is ever opened for reading."""
    import signal

    def boom(*_):
        raise TimeoutError("hung: a special file was opened")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _make_special(path, kind, monkeypatch):
    if os.path.lexists(path):
        os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        import socket
        monkeypatch.chdir(os.path.dirname(path))       # AF_UNIX paths are short
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.basename(path))
        return s
    elif kind == "device":
        os.symlink("/dev/zero", path)
    elif kind == "dangling":
        os.symlink(str(path) + ".gone", path)
    elif kind == "loop":
        os.symlink(os.path.basename(path), path)       # links to itself: ELOOP
    return None


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "dangling", "loop"])
def test_special_file_as_image_never_hangs(ham, tmp_path, kind, monkeypatch, no_hang):
    root, info = ham
    bad = info["images"][4]
    sock = _make_special(bad, kind, monkeypatch)
    try:
        p = assert_fails_then_skips(root, tmp_path, bad, "cannot read image", lost=1)
    finally:
        if sock is not None:
            sock.close()
    what = {"fifo": "FIFO", "socket": "socket", "device": "device", "dangling": "dangling",
            "loop": "symlink loop"}[kind]
    assert what in p.metadata["skipped"][0]["reason"]


@pytest.mark.parametrize("layout", ["breast", "folders"])
def test_fifo_image_in_other_layouts(tmp_path, layout, monkeypatch, no_hang):
    if layout == "breast":
        make_breast(str(tmp_path / "d"))
        bad = tmp_path / "d" / "UDIAT" / "original" / "000001.png"
    else:
        make_folders(str(tmp_path / "d"), clients={"a": 6, "b": 4})
        bad = tmp_path / "d" / "a" / "images" / "img002.png"
    _make_special(bad, "fifo", monkeypatch)
    with pytest.raises(BadInputError, match="FIFO") as e:
        prepare(layout, tmp_path / "d", tmp_path / "cache")
    assert e.value.path == str(bad)
    p = prepare(layout, tmp_path / "d", tmp_path / "cache", on_bad_input="skip")
    assert any(str(bad) in d["reason"] for d in p.metadata["skipped"])


@pytest.mark.parametrize("which", ["labels", "metadata"])
def test_fifo_table_is_an_error_in_both_modes(tmp_path, which, monkeypatch, no_hang):
    if which == "labels":
        make_folders(str(tmp_path / "d"), clients={"a": 6, "b": 4})
        bad, name = tmp_path / "d" / "a" / "labels.csv", "folders"
    else:
        make_ham10000(str(tmp_path / "d"), num_images=8, size=(40, 30))
        bad, name = tmp_path / "d" / "HAM10000_metadata.csv", "ham10000"
    _make_special(bad, "fifo", monkeypatch)
    for mode in ("fail", "skip"):
        with pytest.raises(BadInputError, match="FIFO") as e:
            prepare(name, tmp_path / "d", tmp_path / "cache", on_bad_input=mode)
        assert e.value.path == str(bad)


def test_symlink_loops_and_outside_links(ham, tmp_path, caplog, no_hang):
    """A folder link loop is entered once (logged), a folder linked from outside data_dir is
    followed (logged), irregular entries with other names are ignored (logged)."""
    root, info = ham
    os.symlink("..", root / "HAM10000_images_part_1" / "up")         # loop back to data_dir
    outside = tmp_path / "elsewhere"
    shutil.move(str(root / "HAM10000_segmentations_lesion_tschandl"), str(outside))
    os.symlink(str(outside), root / "HAM10000_segmentations_lesion_tschandl")
    os.mkfifo(root / "README")                                        # not a data file name
    os.symlink(str(root / "nowhere"), root / "old_notes")             # dangling, not data
    caplog.set_level(logging.WARNING, logger="fedmix_jax.data.real")
    p = prepare("ham10000", root, tmp_path / "cache")
    assert len(all_ids(p)) == N and not p.metadata["skipped"]
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "already visited" in log and "outside" in log
    assert "README" in log and "old_notes" in log


# --------------------------------------------------------------------------- decompression bombs


def _png_claiming(path, width, height):
    """A tiny valid 1x1 PNG whose header claims ``width`` x ``height`` pixels."""
    import io
    import struct
    import zlib
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8                                   # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_decompression_bomb_header(ham, tmp_path):
    root, info = ham
    bad = info["masks"][6]
    _png_claiming(bad, 100_000, 100_000)           # 10 G pixels announced, 70 bytes on disk
    assert_fails_then_skips(root, tmp_path, bad, "decompression bomb")


@pytest.mark.parametrize("limit", [2000, 3000])   # Pillow's error (> 2x) and warning (> 1x)
def test_image_above_max_pixels_is_refused(ham, tmp_path, limit, monkeypatch):
    root, info = ham
    bad = info["images"][2]
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(bad)    # 4,800 px; others 1,200
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert_fails_then_skips(root, tmp_path, bad, "decompression bomb")


# --------------------------------------------------------------------------- damaged cache


def _corrupt_train_shard(prepared):
    shard = [f for f in os.listdir(prepared.path) if "-train.array_record" in f][0]
    path = os.path.join(prepared.path, shard)
    with open(path, "r+b") as f:
        f.seek(100)                                  # inside the first chunk (it starts at 64)
        chunk = bytearray(f.read(16))
        f.seek(100)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return path


def test_corrupted_cache_record_is_rebuilt_or_named(tmp_path, caplog):
    from fedmix_jax.data.real.errors import CacheDamagedError
    make_folders(str(tmp_path / "f"), clients={"a": 8, "b": 8})
    c = cfg("folders", tmp_path / "f", tmp_path / "cache")
    fed = load_federation_from_config(c, verbose=False)
    p = prepare("folders", tmp_path / "f", tmp_path / "cache")
    _corrupt_train_shard(p)
    caplog.set_level(logging.WARNING, logger="fedmix_jax.data.real")
    fed2 = load_federation_from_config(c, verbose=False)          # rebuilt once, same data
    np.testing.assert_array_equal(fed.train.images, fed2.train.images)
    assert any("is damaged" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records)
    # without the source: a named error saying how to rebuild, no traceback from the reader
    _corrupt_train_shard(prepare("folders", tmp_path / "f", tmp_path / "cache"))
    shutil.rmtree(tmp_path / "f")
    c.data_dir = ""
    with pytest.raises(CacheDamagedError, match="rebuild") as e:
        load_federation_from_config(cfg("folders", tmp_path / "f", tmp_path / "cache"),
                                    verbose=False)
    assert "is damaged" in str(e.value)


def test_invalid_cache_without_source_is_named(tmp_path):
    from fedmix_jax.data.real import DatasetNotFoundError
    make_folders(str(tmp_path / "f"), clients={"a": 6, "b": 4})
    p = prepare("folders", tmp_path / "f", tmp_path / "cache")
    os.remove(os.path.join(p.path, "dataset_info.json"))
    shutil.rmtree(tmp_path / "f")
    with pytest.raises(DatasetNotFoundError, match="is damaged") as e:
        prepare("folders", tmp_path / "f", tmp_path / "cache")
    assert p.path in str(e.value)
