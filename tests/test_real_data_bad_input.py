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
