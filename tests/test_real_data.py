"""Real-data sources: layouts -> TFDS array_record cache (TensorFlow-free) -> Federation arrays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import chex
import numpy as np
import pytest

from fedmix_jax.data.federation import BOX, IMAGE, NONE, PIXEL, pack_split_labels
from fedmix_jax.data.real import (DatasetNotFoundError, load_federation_from_config,
                                  prepare_dataset, validate_cache)
from fedmix_jax.data.real import build as build_cli
from fedmix_jax.data.real.make_fixture import make_breast, make_folders, make_ham10000
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ helpers
from fixtures_real import SIZE, cfg, expected_mask, prepare, records, split_of_ids  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ham_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ham")
    info = make_ham10000(str(root), num_images=28, size=(40, 30), seed=1)
    return root, info


@pytest.fixture(scope="module")
def ham_built(ham_tree, tmp_path_factory):
    root, info = ham_tree
    cache = tmp_path_factory.mktemp("ham_cache")
    return prepare("ham10000", root, cache), info, cache


# ---------------------------------------------------------------------------------- HAM10000


def test_ham10000_federation_arrays(ham_built):
    prepared, info, cache = ham_built
    fed = load_federation_from_config(cfg("ham10000", prepared.metadata["source_dir"], cache),
                                      verbose=False)
    assert fed.client_names == ["rosendahl", "vidir_modern", "vienna_dias", "vidir_molemax"]
    assert fed.class_names == ["lesion"]
    total = 0
    for split in (fed.train, fed.val, fed.test):
        c, n = split.valid.shape
        assert c == 4
        assert split.images.shape == (4, n, SIZE, SIZE, 1) and split.images.dtype == np.uint8
        assert split.masks.shape == split.boxes.shape == (4, n, SIZE, SIZE, 1)
        assert split.masks.dtype == split.boxes.dtype == np.uint8    # {0, 1}, lossless
        assert split.image_labels.shape == (4, n, 1)
        assert split.images.max() > 1                        # 0..255 (k means k / 255)
        assert set(np.unique(split.masks)) <= {0.0, 1.0}
        assert set(np.unique(split.boxes)) <= {0.0, 1.0}
        v = split.valid
        assert (split.image_labels[v] == 1).all()          # every HAM image has a lesion
        assert (split.masks[v].reshape(v.sum(), -1).max(1) == 1).all()
        assert (split.boxes >= split.masks).all()          # boxes contain their masks
        assert (split.images[~v] == 0).all()                # padding is zeros
        lv = split.levels
        assert (lv[0][v[0]] == BOX).all() and (lv[2][v[2]] == PIXEL).all()   # [B, B, L, B]
        total += int(v.sum())
    assert total == 28
    assert fed.train.counts().tolist() == [
        prepared.metadata["counts"]["train"][c] for c in fed.client_names]
    # config.data.pack_labels: each split packed as it is read, equal to packing afterwards
    packed = load_federation_from_config(
        cfg("ham10000", prepared.metadata["source_dir"], cache, pack_labels=True), verbose=False)
    for name in ("train", "val", "test"):
        a, b = pack_split_labels(getattr(fed, name)), getattr(packed, name)
        assert b.masks.shape[-2] == -(-SIZE // 8)
        chex.assert_trees_all_equal(a, b)


def test_ham10000_records_match_csv_and_masks(ham_built):
    prepared, info, _ = ham_built
    rows = {r["image_id"]: r for r in info["rows"]}
    masks = dict(zip([r["image_id"] for r in info["rows"]], info["masks"]))
    seen = []
    for split in ("train", "validation", "test"):
        for r in records(prepared, split):
            row = rows[r["id"]]
            assert r["client"] == row["dataset"]                      # client from the CSV
            assert prepared.clients[int(r["client_index"])] == r["client"]
            assert r["category"] == row["dx"]
            assert int(r["malignant"]) == (1 if row["dx"] in ("bcc", "akiec", "mel") else 0)
            assert r["image"].shape == (SIZE, SIZE, 1) and r["image"].dtype == np.uint8
            np.testing.assert_array_equal(r["mask"][..., 0], expected_mask([masks[r["id"]]]))
            assert tuple(r["orig_size"]) == (30, 40)
            b = r["box_coords"]
            assert b.shape[1] == 4 and len(b) >= 1
            ys, xs = np.nonzero(r["mask"][..., 0])
            assert b[:, 0].min() <= xs.min() and b[:, 2].max() >= xs.max()
            assert b[:, 1].min() <= ys.min() and b[:, 3].max() >= ys.max()
            seen.append(r["id"])
    assert sorted(seen) == sorted(rows)
    assert prepared.metadata["skipped"] == []


def test_ham10000_splits_disjoint_grouped_by_lesion(ham_built):
    prepared, info, _ = ham_built
    split = split_of_ids(prepared)
    assert len(split) == 28                                  # disjoint and complete
    by_lesion = {}
    for r in info["rows"]:
        by_lesion.setdefault(r["lesion_id"], set()).add(split[r["image_id"]])
    assert any(len([r for r in info["rows"] if r["lesion_id"] == k]) > 1 for k in by_lesion)
    assert all(len(s) == 1 for s in by_lesion.values())      # a lesion never straddles splits
    for c in prepared.clients:
        counts = {sp: prepared.metadata["counts"][sp][c] for sp in ("train", "validation", "test")}
        assert min(counts.values()) >= 1


def test_splits_stable_across_builds_and_locations(ham_tree, tmp_path):
    root, _ = ham_tree
    copy = tmp_path / "elsewhere" / "ham_copy"
    shutil.copytree(root, copy)
    a = split_of_ids(prepare("ham10000", root, tmp_path / "c1"))
    b = split_of_ids(prepare("ham10000", copy, tmp_path / "c2"))
    assert a == b
    c = split_of_ids(prepare("ham10000", root, tmp_path / "c3", seed=5))
    assert set(c) == set(a) and c != a                       # the seed matters


def test_rgb_and_max_per_client(ham_tree, tmp_path):
    root, _ = ham_tree
    fed = load_federation_from_config(
        cfg("ham10000", root, tmp_path, channels=3, max_per_client=4,
            clients=["vienna_dias", "rosendahl"], levels=["pixel", "image"]), verbose=False)
    assert fed.client_names == ["vienna_dias", "rosendahl"]
    assert fed.train.images.shape[-1] == 3
    per_client = fed.train.counts() + fed.val.counts() + fed.test.counts()
    assert per_client.tolist() == [4, 4]
    assert (fed.test.counts() >= 1).all() and (fed.val.counts() >= 1).all()
    assert (fed.train.levels[1][fed.train.valid[1]] == IMAGE).all()


def test_cache_is_reused_and_survives_missing_source(ham_tree, tmp_path):
    root, _ = ham_tree
    copy = tmp_path / "ham"
    shutil.copytree(root, copy)
    first = prepare("ham10000", copy, tmp_path / "cache")
    assert first.built_now
    again = prepare("ham10000", copy, tmp_path / "cache")
    assert not again.built_now
    shutil.rmtree(copy)                                      # raw data gone: the cache serves
    fed = load_federation_from_config(cfg("ham10000", copy, tmp_path / "cache"), verbose=False)
    assert int(fed.train.valid.sum() + fed.val.valid.sum() + fed.test.valid.sum()) == 28


def test_source_change_triggers_rebuild(tmp_path):
    make_ham10000(str(tmp_path / "ham"), num_images=16, size=(40, 30))
    assert prepare("ham10000", tmp_path / "ham", tmp_path / "cache").built_now
    with open(tmp_path / "ham" / "HAM10000_metadata.csv") as f:
        lines = f.readlines()
    with open(tmp_path / "ham" / "HAM10000_metadata.csv", "w") as f:
        f.writelines(lines[:-1])                             # one image fewer
    p = prepare("ham10000", tmp_path / "ham", tmp_path / "cache")
    assert p.built_now and sum(p.metadata["found"].values()) == 15
    assert not prepare("ham10000", tmp_path / "ham", tmp_path / "cache", rebuild=False).built_now
    assert prepare("ham10000", tmp_path / "ham", tmp_path / "cache", rebuild=True).built_now


# ---------------------------------------------------------------------------------- breast


@pytest.mark.parametrize("busis_dirs", [("original", "GT"), ("images", "masks"),
                                        ("Original", "GT")])
def test_breast_layout(tmp_path, busis_dirs):
    info = make_breast(str(tmp_path / "breast"), num_busi=(3, 2, 2), num_udiat=4, num_busis=4,
                       busis_dirs=busis_dirs)
    prepared = prepare("breast", tmp_path / "breast", tmp_path / "cache")
    assert prepared.clients == ["busi", "busis", "udiat"]
    recs = {r["id"]: r for sp in ("train", "validation", "test") for r in records(prepared, sp)}
    assert len(recs) == 7 + 4 + 4
    for client in ("busi", "udiat", "busis"):
        for ipath, mpaths, merged in info[client]:
            stem = os.path.splitext(os.path.basename(ipath))[0]
            r = recs[f"{client}/{stem}"]
            assert r["client"] == client
            np.testing.assert_array_equal(r["mask"][..., 0], expected_mask(mpaths))
            if client == "busi":
                assert int(r["label"][0]) == (0 if stem.startswith("normal") else 1)
                assert r["category"] == stem.split(" ")[0]
            if len(mpaths) > 1:                              # _mask_1.png merged by OR
                only_first = expected_mask(mpaths[:1])
                assert r["mask"][..., 0].sum() > only_first.sum()
            if stem.startswith("normal"):
                assert r["mask"].sum() == 0 and r["boxes"].sum() == 0
    fed = load_federation_from_config(cfg("breast", tmp_path / "breast", tmp_path / "cache"),
                                      verbose=False)
    assert fed.client_names == ["busi", "busis", "udiat"]
    tv = fed.train.valid
    assert [int(fed.train.levels[c][tv[c]][0]) for c in range(3)] == [IMAGE, BOX, PIXEL]


# ---------------------------------------------------------------------------------- folders


def test_folders_layout_with_csvs(tmp_path):
    root = tmp_path / "fed"
    info = make_folders(
        str(root), clients={"site_b": 6, "site_a": 5}, ext=".jpg", mask_suffix="_mask",
        labels={"site_a": {"img000": "lesion", "img003": 0, "img004": 1}},
        boxes={"site_a": {"img004": [[2, 3, 10, 12], [20, 5, 30, 25]]}},
        levels={"site_a": {"img000": "image", "img001": "box", "img004": "none"},
                "site_b": {"img005": "image"}},
        no_mask={"site_a": ["img004"]})
    # img004 of site_a has no mask: level 'none' in levels.csv -> allowed, train only.
    prepared = prepare("folders", root, tmp_path / "cache", channels=3)
    assert prepared.clients == ["site_a", "site_b"]
    recs = {r["id"]: (sp, r) for sp in ("train", "validation", "test")
            for r in records(prepared, sp)}
    assert len(recs) == 11
    sp, r = recs["site_a/img004"]
    assert sp == "train" and not bool(r["has_mask"]) and r["mask"].sum() == 0
    assert int(r["level"]) == NONE and int(r["label"][0]) == 1
    # boxes.csv boxes (original 40x30 pixels) scaled to 32x32, rounded outwards
    np.testing.assert_array_equal(r["box_coords"], [[1, 3, 8, 13], [16, 5, 24, 27]])
    assert r["boxes"][..., 0].sum() == (8 * 11 + 9 * 23)
    assert int(recs["site_a/img000"][1]["level"]) == IMAGE
    assert int(recs["site_a/img003"][1]["label"][0]) == 0
    assert int(recs["site_a/img002"][1]["level"]) == -1
    for client, stems in info.items():
        for stem, (ipath, mpath, _) in stems.items():
            if mpath:
                np.testing.assert_array_equal(recs[f"{client}/{stem}"][1]["mask"][..., 0],
                                              expected_mask([mpath]))
    fed = load_federation_from_config(
        cfg("folders", root, tmp_path / "cache", channels=3, levels=["box", "pixel"]),
        verbose=False)
    assert fed.client_names == ["site_a", "site_b"]
    assert fed.train.images.shape[-1] == 3
    # levels.csv overrides the config's per-client level, sample by sample
    got = {}
    for name, split in (("train", fed.train), ("val", fed.val), ("test", fed.test)):
        for c in range(2):
            got.setdefault(c, []).extend(split.levels[c][split.valid[c]].tolist())
    assert sorted(got[0]) == sorted([IMAGE, BOX, BOX, BOX, NONE])
    assert sorted(got[1]) == sorted([PIXEL] * 5 + [IMAGE])
    # derived boxes contain their masks; masks of val/test samples exist
    for split in (fed.train, fed.val, fed.test):
        has = split.masks.reshape(*split.valid.shape, -1).max(-1) > 0
        assert (split.boxes[has] >= split.masks[has]).all()


def test_folders_default_levels_and_labels_from_masks(tmp_path):
    make_folders(str(tmp_path / "fed"), clients={"a": 4, "b": 4})
    fed = load_federation_from_config(cfg("folders", tmp_path / "fed", tmp_path / "c"),
                                      verbose=False)
    # A Flower site on the same tree, with the coordinator's data.pack_labels: its own rows,
    # masks and boxes bit-packed as the main job packs them.
    import ml_collections

    from fedmix_jax.flower.local_site import load_site_data

    shared = ml_collections.ConfigDict(dict(data=dict(image_size=SIZE, channels=1,
                                                      pack_labels=True)))
    site = load_site_data({"data": "folders", "data-dir": str(tmp_path / "fed"),
                           "cache-dir": str(tmp_path / "c"), "client": "b"}, shared)
    n = int(fed.train.valid[1].sum())
    assert site.train.masks.shape == (n, SIZE, SIZE // 8, 1)
    np.testing.assert_array_equal(site.train.boxes,
                                  pack_split_labels(fed.train).boxes[1][:n])
    for split in (fed.train, fed.val, fed.test):
        v = split.valid
        assert (split.levels[v] == PIXEL).all()
        present = split.masks.reshape(*v.shape, -1).max(-1)
        np.testing.assert_array_equal(split.image_labels[..., 0][v], present[v])
    # img003 of each client has an empty mask (make_folders) -> image label 0
    assert (fed.train.image_labels[fed.train.valid] == 0).any() or \
        (fed.val.image_labels[fed.val.valid] == 0).any() or \
        (fed.test.image_labels[fed.test.valid] == 0).any()


def test_box_mode_enclosing_in_the_real_loader(tmp_path):
    """config.data.box_mode='enclosing' gives the reference's single box (bottom/right one pixel
    smaller than the drawn margin) and its own cache; 'component' (default) is unchanged."""
    from fedmix_jax.data.boxes import boxes_from_mask, sample_rng
    from fedmix_jax.data.real.splits import stable_int
    make_folders(str(tmp_path / "fed"), clients={"a": 5, "b": 4})
    comp = prepare("folders", tmp_path / "fed", tmp_path / "c")
    enc = prepare("folders", tmp_path / "fed", tmp_path / "c", box_mode="enclosing")
    assert "_enclosing" in enc.config.name and "_enclosing" not in comp.config.name
    assert enc.path != comp.path and enc.metadata["config"]["box_mode"] == "enclosing"
    n = 0
    for sp in ("train", "validation", "test"):
        for rc, re_ in zip(records(comp, sp), records(enc, sp)):
            assert rc["id"] == re_["id"]
            np.testing.assert_array_equal(rc["mask"], re_["mask"])
            mask = re_["mask"][..., 0] > 0
            rng = lambda: sample_rng(0, stable_int("boxes", re_["id"]))  # noqa: E731
            np.testing.assert_array_equal(re_["box_coords"],
                                          boxes_from_mask(mask, rng(), box_mode="enclosing"))
            np.testing.assert_array_equal(rc["box_coords"], boxes_from_mask(mask, rng()))
            n += int(mask.any())
    assert n >= 4
    with pytest.raises(ValueError, match="box_mode"):
        prepare("folders", tmp_path / "fed", tmp_path / "c", box_mode="tight")


# ---------------------------------------------------------------------------------- not found


@pytest.mark.parametrize("name", ["ham10000", "breast", "folders"])
def test_missing_or_empty_data_dir(tmp_path, name):
    for data_dir in (tmp_path / "nope", tmp_path / "empty", ""):
        if data_dir:
            os.makedirs(tmp_path / "empty", exist_ok=True)
        with pytest.raises(DatasetNotFoundError) as e:
            load_federation_from_config(cfg(name, data_dir, tmp_path / "cache"), verbose=False)
        msg = str(e.value)
        assert isinstance(e.value, ValueError)
        assert "--config.data.data_dir" in msg
        assert "Expected layout" in msg and "data_dir/" in msg
        assert "Where to get it" in msg
        if data_dir:
            assert str(data_dir) in msg


def test_ham_without_metadata_names_the_file(tmp_path):
    make_ham10000(str(tmp_path / "ham"), num_images=4, size=(40, 30))
    os.remove(tmp_path / "ham" / "HAM10000_metadata.csv")
    with pytest.raises(DatasetNotFoundError, match="HAM10000_metadata.csv"):
        prepare("ham10000", tmp_path / "ham", tmp_path / "cache")


def test_breast_pair_folder_missing_names_it(tmp_path):
    make_breast(str(tmp_path / "b"))
    shutil.rmtree(tmp_path / "b" / "UDIAT" / "GT")
    with pytest.raises(DatasetNotFoundError, match="UDIAT"):
        prepare("breast", tmp_path / "b", tmp_path / "cache")


def test_unknown_client_and_bad_levels_in_config(ham_built):
    prepared, _, cache = ham_built
    src = prepared.metadata["source_dir"]
    with pytest.raises(ValueError, match="vienna_diaz"):
        load_federation_from_config(cfg("ham10000", src, cache, clients=["vienna_diaz"]),
                                    verbose=False)
    with pytest.raises(ValueError, match="levels"):
        load_federation_from_config(cfg("ham10000", src, cache, levels=["box", "pixel"]),
                                    verbose=False)
    with pytest.raises(ValueError, match="data.name"):
        load_federation_from_config(cfg("isic", src, cache), verbose=False)


# ---------------------------------------------------------------------------------- cache safety


def test_interrupted_build_is_rebuilt(tmp_path):
    """Kill a build half-way (os._exit: no cleanup), then load: it rebuilds, not reads."""
    make_ham10000(str(tmp_path / "ham"), num_images=16, size=(40, 30))
    script = textwrap.dedent(f"""
        import os
        from fedmix_jax.data.real import builders, default_data_config, prepare_dataset
        orig = builders.process_sample
        n = [0]
        def dying(*a, **k):
            n[0] += 1
            if n[0] > 6:
                os._exit(17)
            return orig(*a, **k)
        builders.process_sample = dying
        prepare_dataset(default_data_config("ham10000", data_dir={str(tmp_path / 'ham')!r},
                        cache_dir={str(tmp_path / 'cache')!r}, image_size={SIZE}), verbose=False)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 17, res.stderr[-3000:]
    cfg_dir = tmp_path / "cache" / "ham10000_fedmix" / "gray32_seed0_test20_val10"
    assert any(e.startswith("incomplete.") for e in os.listdir(cfg_dir))
    assert not (cfg_dir / "1.0.0").exists()
    p = prepare("ham10000", tmp_path / "ham", tmp_path / "cache")
    assert p.built_now
    assert not any(e.startswith("incomplete.") for e in os.listdir(cfg_dir))
    assert sum(len(records(p, sp)) for sp in ("train", "validation", "test")) == 16


@pytest.mark.parametrize("damage", ["no_info", "truncated_shard", "missing_shard", "bad_json"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    make_ham10000(str(tmp_path / "ham"), num_images=16, size=(40, 30))
    p = prepare("ham10000", tmp_path / "ham", tmp_path / "cache")
    shard = os.path.join(p.path, "ham10000_fedmix-train.array_record-00000-of-00001")
    if damage == "no_info":
        os.remove(os.path.join(p.path, "dataset_info.json"))
    elif damage == "truncated_shard":
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    elif damage == "missing_shard":
        os.remove(shard)
    else:
        with open(os.path.join(p.path, "metadata.json"), "w") as f:
            f.write('{"fedmix": {')
    ok, reason = validate_cache(p.path, "ham10000_fedmix", p.config)
    assert not ok, reason
    q = prepare("ham10000", tmp_path / "ham", tmp_path / "cache")
    assert q.built_now and validate_cache(q.path, "ham10000_fedmix", q.config)[0]
    assert sum(len(records(q, sp)) for sp in ("train", "validation", "test")) == 16


# ---------------------------------------------------------------------------------- CLI, TF-free


def test_cli_builds_then_config_reads_cache(tmp_path, capsys):
    make_breast(str(tmp_path / "b"))
    rc = build_cli.main(["build", "--dataset", "breast", "--manual_dir", str(tmp_path / "b"),
                         "--cache_dir", str(tmp_path / "cache"), "--image_size", str(SIZE)])
    assert rc == 0
    assert "built" in capsys.readouterr().out
    p = prepare_dataset(cfg("breast", tmp_path / "b", tmp_path / "cache"), verbose=False)
    assert not p.built_now


def test_no_tensorflow_imported(tmp_path):
    make_folders(str(tmp_path / "fed"), clients={"a": 4, "b": 3})
    make_ham10000(str(tmp_path / "ham"), num_images=16, size=(40, 30))
    script = textwrap.dedent(f"""
        import sys
        from fedmix_jax.data.real import default_data_config, load_federation_from_config
        from fedmix_jax.data.real import build
        for name, d in (("folders", {str(tmp_path / 'fed')!r}), ("ham10000", {str(tmp_path / 'ham')!r})):
            cfg = default_data_config(name, data_dir=d, cache_dir={str(tmp_path / 'cache')!r},
                                      image_size=16)
            fed = load_federation_from_config(cfg, verbose=False)   # build + read
            fed = load_federation_from_config(cfg, verbose=False)   # read from the cache
            assert fed.train.images.shape[2:] == (16, 16, 1)
        bad = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
        assert not bad, bad
        print("TF-FREE-OK")
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and "TF-FREE-OK" in res.stdout, res.stderr[-3000:]


def test_zero_fractions_give_empty_splits(tmp_path):
    make_folders(str(tmp_path / "fed"), clients={"a": 3, "b": 2})
    fed = load_federation_from_config(cfg("folders", tmp_path / "fed", tmp_path / "c",
                                          test_fraction=0.0, val_fraction=0.0), verbose=False)
    assert fed.train.counts().tolist() == [3, 2]
    assert fed.val.counts().tolist() == [0, 0] and fed.test.counts().tolist() == [0, 0]
    assert fed.val.images.shape[2:] == (SIZE, SIZE, 1)
