"""RETOUCH: the .mhd/.raw layout, the TF-free builder (splits by volume), bad input, the config."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from fedmix_jax import main as main_lib  # noqa: E402
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL  # noqa: E402
from fedmix_jax.data.real import (BadInputError, DatasetNotFoundError,  # noqa: E402
                                  default_data_config, prepare_dataset)
from fedmix_jax.data.real.retouch import _to_uint8, load_volume_pair  # noqa: E402
from fedmix_jax.data.real.retouch_fixture import (fake_oct_volume,  # noqa: E402
                                                  make_retouch_fixture, write_mhd)
from fedmix_jax.data.sources import load_federation  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "retouch.py")
SIZE = 32
SHAPE = (5, 40, 30)   # B-scans, depth, width


def _cfg(src, cache, **kw):
    return default_data_config("retouch", data_dir=str(src), cache_dir=str(cache),
                               image_size=SIZE, **kw)


def _records(prepared, split):
    src = prepared.sources.get(split)
    if src is None:
        return []
    out = []
    for r in src.__getitems__(list(range(len(src)))):
        r = dict(r)
        for k in ("client", "id", "volume", "image_path"):
            r[k] = r[k].decode() if isinstance(r[k], bytes) else str(r[k])
        out.append(r)
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("retouch")
    make_retouch_fixture(str(root / "src"), volumes=4, shape=SHAPE, seed=0, lesions=3)
    return root


@pytest.fixture(scope="module")
def prepared(tree):
    return prepare_dataset(_cfg(tree / "src", tree / "cache"), verbose=False)


def test_layout_clients_classes_and_levels(tree, prepared):
    assert prepared.clients == ["cirrus", "topcon", "spectralis"]   # the reference's order
    assert prepared.metadata["class_names"] == ["irf", "srf", "ped"]
    assert prepared.metadata["found"] == {c: 4 * SHAPE[0] for c in prepared.clients}
    fed = load_federation(_cfg(tree / "src", tree / "cache"), verbose=False)
    assert fed.client_names == ["cirrus", "topcon", "spectralis"]
    assert [int(fed.train.levels[c, 0]) for c in range(3)] == [IMAGE, BOX, PIXEL]
    for split in (fed.train, fed.val, fed.test):
        v = split.valid
        m, b, lab = split.masks[v] > 0, split.boxes[v] > 0, split.image_labels[v] > 0
        assert m.shape[-1] == b.shape[-1] == lab.shape[-1] == 3
        assert (m.sum(-1) <= 1).all()                          # one-hot: one class per pixel
        np.testing.assert_array_equal(lab, m.any(axis=(1, 2)))  # labels = presence per class
        assert not (m & ~b).any()                               # every class inside its boxes
        np.testing.assert_array_equal(b.any(axis=(1, 2)), lab)  # boxes only for present classes
    assert fed.train.image_labels[fed.train.valid].sum(0).min() > 0  # all classes occur


def test_pixels_match_the_volume(tree, prepared):
    r = _records(prepared, "train")[0]
    vol_dir = os.path.join(str(tree / "src"), os.path.dirname(r["image_path"]))
    oct_arr = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(vol_dir, "oct.mhd")))
    ref_arr = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(vol_dir, "reference.mhd")))
    assert oct_arr.shape == ref_arr.shape == SHAPE
    images, labels, hw = load_volume_pair(os.path.join(vol_dir, "oct.mhd"),
                                          os.path.join(vol_dir, "reference.mhd"), SIZE)
    z = int(r["slice"])
    assert r["id"].endswith(f"/{z:03d}") and tuple(r["orig_size"]) == hw == SHAPE[1:]
    np.testing.assert_array_equal(r["image"][..., 0], images[z, ..., 0])
    for k in range(3):
        np.testing.assert_array_equal(r["mask"][..., k], labels[z] == k + 1)
    # nearest-neighbour labels: every class in the resized slice exists in the original
    assert set(np.unique(labels[z])) <= set(np.unique(ref_arr[z]))


def test_splits_by_volume_stable_and_seeded(tree, prepared):
    vol_split = {}
    for sp in ("train", "validation", "test"):
        recs = _records(prepared, sp)
        assert recs, sp
        for r in recs:
            assert vol_split.setdefault(r["volume"], sp) == sp, f"{r['volume']} straddles splits"
    assert len(vol_split) == 12
    for c in ("cirrus", "topcon", "spectralis"):
        assert sorted(s for v, s in vol_split.items() if v.startswith(c + "/")) == \
            ["test", "train", "train", "validation"]
    # same data elsewhere -> the same assignment; other seeds -> a different one
    shutil.copytree(tree / "src", tree / "copy")
    again = prepare_dataset(_cfg(tree / "copy", tree / "cache2"), verbose=False)
    assert {r["volume"]: sp for sp in ("train", "validation", "test")
            for r in _records(again, sp)} == vol_split
    other = [{r["volume"]: sp for sp in ("train", "validation", "test")
              for r in _records(prepare_dataset(_cfg(tree / "src", tree / f"c{s}", seed=s),
                                                verbose=False), sp)} for s in (1, 2)]
    assert any(o != vol_split for o in other)


def test_uint16_volumes_are_rescaled(tmp_path):
    rng = np.random.default_rng(0)
    img, lab = fake_oct_volume((2, 30, 20), rng, np.uint16)
    assert img.dtype == np.uint16 and img.max() > 255
    write_mhd(img, str(tmp_path / "oct.mhd"))
    write_mhd(lab, str(tmp_path / "reference.mhd"))
    u8 = _to_uint8(img)   # per volume: [0.5, 99.5] percentiles -> [0, 255]
    assert u8.dtype == np.uint8 and u8.max() == 255 and u8.min() == 0
    flat, order = img.ravel(), np.argsort(img.ravel(), kind="stable")
    assert (np.diff(u8.ravel()[order].astype(int)) >= 0).all()   # monotonic
    assert np.mean(u8 == 255) < 0.02 and np.mean(flat > 255) > 0.5
    images, _, _ = load_volume_pair(str(tmp_path / "oct.mhd"), str(tmp_path / "reference.mhd"),
                                    16)
    assert images.dtype == np.uint8 and images.max() > 100   # the uint8 range is used


def _bad_tree(root, kind):
    src = root / kind
    make_retouch_fixture(str(src), volumes=4, shape=SHAPE, seed=1)
    vol = src / "RETOUCH-TrainingSet-Topcon" / "TRAIN050"
    rng = np.random.default_rng(0)
    if kind == "shape":
        _, lab = fake_oct_volume((SHAPE[0] - 1,) + SHAPE[1:], rng)
        write_mhd(lab, str(vol / "reference.mhd"))
    elif kind == "labels":
        _, lab = fake_oct_volume(SHAPE, rng)
        lab[0, 0, 0] = 7
        write_mhd(lab, str(vol / "reference.mhd"))
    elif kind == "missing":
        os.remove(vol / "reference.mhd")
        os.remove(vol / "reference.raw")
    elif kind == "raw":
        os.remove(vol / "oct.raw")
    return src


@pytest.mark.parametrize("kind,message", [
    ("shape", "volume and label shapes differ in topcon/TRAIN050"),
    ("labels", "labels outside 0-3"),
    ("missing", "missing reference volume"),
    ("raw", "TRAIN050"),
])
def test_bad_input_is_named_and_can_be_skipped(tmp_path, kind, message):
    src = _bad_tree(tmp_path, kind)
    with pytest.raises(BadInputError, match=message) as err:
        prepare_dataset(_cfg(src, tmp_path / "cache"), verbose=False)
    assert "TRAIN050" in str(err.value) + str(err.value.path)
    ok = prepare_dataset(_cfg(src, tmp_path / "cache_skip", on_bad_input="skip"), verbose=False)
    skipped = ok.metadata["skipped"]
    assert len(skipped) == 1 and "TRAIN050" in skipped[0]["path"]
    vols = {r["volume"] for sp in ("train", "validation", "test") for r in _records(ok, sp)}
    assert "topcon/TRAIN050" not in vols and len(vols) == 11


def test_missing_download_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="RETOUCH-TrainingSet-Cirrus"):
        prepare_dataset(_cfg(tmp_path / "nowhere", tmp_path / "cache"), verbose=False)
    (tmp_path / "empty_vendor" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="cirrus, spectralis or topcon"):
        prepare_dataset(_cfg(tmp_path / "empty_vendor", tmp_path / "cache"), verbose=False)


def _config():
    spec = importlib.util.spec_from_file_location("retouch_config", CONFIG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def test_config_has_the_papers_setting():
    c = _config()
    assert c.data.name == "retouch" and c.num_rounds == 150
    assert tuple(c.data.clients) == ("cirrus", "topcon", "spectralis")
    assert tuple(c.data.levels) == ("image", "box", "pixel")
    assert (c.train.lam, c.train.beta) == (2.0, 3.0)
    assert (c.train.learning_rate, c.train.weight_decay) == (1.5e-3, 1e-5)
    assert c.train.batch_size == 16 and c.data.image_size == 224
    assert tuple(c.train.crop) == (200, 200) and c.model.width == 64


def test_config_runs_end_to_end_on_the_fixture(tree, tmp_path):
    wd = str(tmp_path / "run")
    argv = ["fedmix_jax.main", f"--config={CONFIG}", f"--config.data.data_dir={tree / 'src'}",
            f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.num_rounds=2",
            "--config.model.width=4", "--config.model.depth=2",
            f"--config.data.image_size={SIZE}", "--config.train.crop=(28,28)",
            "--config.train.batch_size=4", f"--workdir={wd}", "--quiet"]
    assert main_lib.main(argv) == 0
    with open(os.path.join(wd, "summary.json")) as f:
        summary = json.load(f)
    assert summary["class_names"] == ["irf", "srf", "ped"]
    assert summary["client_names"] == ["cirrus", "topcon", "spectralis"]
    assert len(summary["best"]["test"]["dice"]) == 3
    bad = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
    assert not bad


def test_config_follows_the_reference_notebooks():
    c = _config()
    assert c.train.hflip and not c.train.vflip
    assert c.train.warmup_rounds == 100 and c.data.drop_empty_slices
    assert c.data.box_mode in ("component", "enclosing")


def test_drop_empty_slices_leaves_fluid_free_bscans_out_of_every_split(tree, prepared):
    dropped = prepare_dataset(_cfg(tree / "src", tree / "cache", drop_empty_slices=True),
                              verbose=False)
    assert dropped.path != prepared.path          # its own cache
    total = 0
    for split in ("train", "validation", "test"):
        full = _records(prepared, split)
        kept = _records(dropped, split)
        assert [r["id"] for r in kept] == [r["id"] for r in full if r["mask"].any()]
        assert all(r["mask"].any() for r in kept)
        lost = {c: sum(1 for r in full if r["client"] == c and not r["mask"].any())
                for c in dropped.clients}
        assert dropped.metadata["dropped_empty"][split] == lost
        total += sum(lost.values())
    assert total > 0                              # the fixture has B-scans without fluid


def test_drop_empty_slices_is_a_retouch_option():
    from fedmix_jax.data.real.builders import make_config

    assert make_config("retouch", drop_empty_slices=True).drop_empty_slices
    with pytest.raises(ValueError, match="drop_empty_slices"):
        make_config("ham10000", drop_empty_slices=True)


def _two_regions_of_one_class():
    labels = np.zeros((32, 32), np.uint8)
    labels[2:5, 2:5] = 1                          # IRF, two regions far apart (more than
    labels[26:30, 26:30] = 1                      # two 9 px margins between them)
    labels[12:15, 12:16] = 3                      # PED, one region
    return labels


@pytest.mark.parametrize("box_mode,irf_boxes", [("component", 2), ("enclosing", 1)])
def test_box_mode_gives_a_box_per_region_or_one_per_class(box_mode, irf_boxes):
    from fedmix_jax.data.real.retouch import slice_example
    from fedmix_jax.data.real.scanning import Sample

    s = Sample(id="cirrus/TRAIN001/002", client="cirrus", stem="TRAIN001_002",
               image_path="/d/cirrus/TRAIN001/oct.mhd", mask_paths=[], group="cirrus/TRAIN001")
    labels = _two_regions_of_one_class()
    ex = slice_example(s, np.zeros((32, 32, 1), np.uint8), labels, (32, 32), 0, "/d",
                       {"cirrus": 0}, "cirrus/TRAIN001", 2, box_mode=box_mode)
    assert ex["box_class"].tolist() == [0] * irf_boxes + [2]
    assert ex["label"].tolist() == [1, 0, 1]
    irf = ex["boxes"][..., 0].astype(bool)
    assert irf[labels == 1].all()                 # every IRF pixel is inside an IRF box
    # one enclosing box also covers the gap between the regions; per-region boxes do not
    assert irf[15, 15] == (box_mode == "enclosing")


def test_box_mode_reaches_the_retouch_builder(tree):
    enclosing = prepare_dataset(_cfg(tree / "src", tree / "cache", box_mode="enclosing"),
                                verbose=False)
    assert enclosing.metadata["config"]["box_mode"] == "enclosing"
    for r in _records(enclosing, "train"):
        classes = np.asarray(r["box_class"]).tolist()
        assert len(classes) == len(set(classes))  # at most one box per class
