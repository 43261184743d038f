"""Hostile RETOUCH volumes: the strict MetaImage reader (fedmix_jax.data.real.metaimage) reads what
SimpleITK writes, and refuses in one named error -- before allocating or decoding -- compressed
flags over plain data, non-finite voxels, data files outside the volume's folder, FIFOs, sizes
that do not match, decompression bombs."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from fedmix_jax.data.real import BadInputError, default_data_config, prepare_dataset  # noqa: E402
from fedmix_jax.data.real import metaimage  # noqa: E402
from fedmix_jax.data.real.retouch_fixture import make_retouch_fixture  # noqa: E402
from hang_alarm import alarm_fixture  # noqa: E402

SHAPE = (5, 40, 30)


alarm = alarm_fixture(120)


def _header(data_file, dims=(4, 3, 2), etype="MET_UCHAR", **extra):
    lines = ["ObjectType = Image", f"NDims = {len(dims)}", "BinaryData = True",
             "BinaryDataByteOrderMSB = False"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    lines += [f"DimSize = {' '.join(map(str, dims))}", f"ElementType = {etype}",
              f"ElementDataFile = {data_file}"]
    return "\n".join(lines) + "\n"


def _write(folder, text, raw=None, raw_name="oct.raw"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "oct.mhd").write_text(text)
    if raw is not None:
        (folder / raw_name).write_bytes(raw)
    return str(folder / "oct.mhd")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("form", ["mhd", "zraw", "mha"])
def test_reads_what_simpleitk_writes(tmp_path, dtype, form):
    rng = np.random.default_rng(0)
    arr = (rng.uniform(0, 200, size=(3, 7, 5))).astype(dtype)
    path = str(tmp_path / ("oct.mha" if form == "mha" else "oct.mhd"))
    sitk.WriteImage(sitk.GetImageFromArray(arr), path, form == "zraw")
    got = metaimage.read_volume(path)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, sitk.GetArrayFromImage(sitk.ReadImage(path)))
    assert metaimage.read_header(path).shape == (3, 7, 5)


def test_big_endian_data(tmp_path):
    arr = np.arange(24, dtype=">u2").reshape(2, 3, 4)
    p = _write(tmp_path, _header("oct.raw", etype="MET_USHORT").replace(
        "MSB = False", "MSB = True"), arr.tobytes())
    np.testing.assert_array_equal(metaimage.read_volume(p), arr.astype(np.uint16))


def test_compressed_flag_over_plain_raw_is_an_error(tmp_path):
    """ITK prints 'Uncompress failed' and returns a near-black volume; here it is an error."""
    raw = np.random.default_rng(0).integers(0, 255, 24, dtype=np.uint8).tobytes()
    p = _write(tmp_path, _header("oct.raw", CompressedData="True"), raw)
    with pytest.raises(BadInputError, match="not valid zlib data.*oct.mhd|oct.mhd.*not valid zlib"):
        metaimage.read_volume(p)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_an_error(tmp_path, value):
    arr = np.ones((2, 3, 4), np.float32)
    arr[1, 2, 3] = value
    p = _write(tmp_path, _header("oct.raw", etype="MET_FLOAT"), arr.tobytes())
    with pytest.raises(BadInputError, match="1 voxel.*NaN or infinite"):
        metaimage.read_volume(p)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "../oct.raw",
                                  "sub/../../x.raw", "link.raw", "LIST", "slice%03d.raw 1 2 1"])
def test_data_file_must_stay_in_the_volume_folder(tmp_path, name):
    vol = tmp_path / "data" / "v"
    vol.mkdir(parents=True)
    (tmp_path / "data" / "oct.raw").write_bytes(bytes(24))     # one level up: never read
    os.symlink("/etc/hostname", vol / "link.raw")
    p = _write(vol, _header(name))
    with pytest.raises(BadInputError, match="ElementDataFile"):
        metaimage.read_header(p)


@pytest.mark.parametrize("which", ["oct.raw", "oct.mhd"])
def test_fifo_never_hangs(tmp_path, which):
    p = _write(tmp_path, _header("oct.raw"), bytes(24))
    os.remove(tmp_path / which)
    os.mkfifo(tmp_path / which)
    with pytest.raises(BadInputError, match="FIFO"):
        metaimage.read_volume(p)


@pytest.mark.parametrize("dims,raw,match", [
    ((1, 1, 200_000_000), bytes(24), "every size must be 1-"),          # the reported hang
    ((100, 100, 10), bytes(24), "holds 24 bytes but DimSize"),         # a lying header
    ((4, 3, 2), bytes(23), "holds 23 bytes"),                              # truncated
    ((4, 3, 2), bytes(25), "holds 25 bytes"),                              # padded
    ((40000, 2, 2), bytes(24), "every size must be 1-"),
    ((4096, 4096, 64), bytes(24), "more than the 512 MiB"),               # 1 GiB announced
    ((0, 3, 2), b"", "every size must be 1-"),
])
def test_sizes_are_checked_before_allocating(tmp_path, dims, raw, match):
    p = _write(tmp_path, _header("oct.raw", dims=dims), raw)
    with pytest.raises(BadInputError, match=match):
        metaimage.read_volume(p)


def test_decompression_bomb_stops_at_the_announced_size(tmp_path):
    bomb = zlib.compress(bytes(50 * 2**20), 9)          # 50 MiB of zeros in ~50 KB
    assert len(bomb) < 100_000
    p = _write(tmp_path, _header("oct.zraw", dims=(100, 100, 10), CompressedData="True"),
               bomb, raw_name="oct.zraw")
    with pytest.raises(BadInputError, match="decodes to more than the 100000 bytes"):
        metaimage.read_volume(p)
    short = zlib.compress(bytes(1000))
    p = _write(tmp_path, _header("oct.zraw", dims=(100, 100, 10), CompressedData="True"),
               short, raw_name="oct.zraw")
    with pytest.raises(BadInputError, match="ends after 1000 of the 100000"):
        metaimage.read_volume(p)
    p = _write(tmp_path, _header("oct.zraw", CompressedData="True", CompressedDataSize=999),
               zlib.compress(bytes(24)), raw_name="oct.zraw")
    with pytest.raises(BadInputError, match="CompressedDataSize is 999"):
        metaimage.read_volume(p)


@pytest.mark.parametrize("text,match", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not text"),
    (b"NDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\n", "no ElementDataFile"),
    (b"NDims = 3\nDimSize = 4 3\nElementType = MET_UCHAR\nElementDataFile = oct.raw\n",
     "one size each"),
    (b"NDims = 3\nDimSize = 4 3 2\nElementType = MET_BOGUS\nElementDataFile = oct.raw\n",
     "is not read"),
    (b"NDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\nElementNumberOfChannels = 3\n"
     b"ElementDataFile = oct.raw\n", "ElementNumberOfChannels"),
    (b"NDims = 3\nDimSize = 4 3 x\nElementType = MET_UCHAR\nElementDataFile = oct.raw\n",
     "not a list of integers"),
    (b"x" * (70 * 1024), "is not 'Key = Value'"),
])
def test_bad_headers_are_named(tmp_path, text, match):
    (tmp_path / "oct.mhd").write_bytes(text)
    (tmp_path / "oct.raw").write_bytes(bytes(24))
    with pytest.raises(BadInputError, match=match) as err:
        metaimage.read_header(str(tmp_path / "oct.mhd"))
    assert "oct.mhd" in str(err.value)


def _cfg(src, cache, **kw):
    return default_data_config("retouch", data_dir=str(src), cache_dir=str(cache),
                               image_size=16, **kw)


@pytest.mark.parametrize("fault", ["compressed_flag", "nan", "traversal", "fifo"])
def test_the_build_names_the_volume_and_can_skip_it(tmp_path, fault):
    src = tmp_path / "src"
    make_retouch_fixture(str(src), volumes=4, shape=SHAPE, seed=1)
    vol = src / "RETOUCH-TrainingSet-Topcon" / "TRAIN050"
    header = (vol / "oct.mhd").read_text()
    if fault == "compressed_flag":
        header = header.replace("CompressedData = False", "CompressedData = True")
    elif fault == "nan":
        arr = np.full(SHAPE, 5.0, np.float32)
        arr[2, 3, 4] = np.nan
        (vol / "oct.raw").write_bytes(arr.tobytes())
        header = header.replace("MET_UCHAR", "MET_FLOAT")
    elif fault == "traversal":
        header = header.replace("ElementDataFile = oct.raw", "ElementDataFile = ../../../x.raw")
        (tmp_path / "x.raw").write_bytes(bytes(int(np.prod(SHAPE))))
    else:
        os.remove(vol / "oct.raw")
        os.mkfifo(vol / "oct.raw")
    (vol / "oct.mhd").write_text(header)
    with pytest.raises(BadInputError, match="TRAIN050"):
        prepare_dataset(_cfg(src, tmp_path / "cache"), verbose=False)
    ok = prepare_dataset(_cfg(src, tmp_path / "cache_skip", on_bad_input="skip"), verbose=False)
    skipped = ok.metadata["skipped"]
    assert len(skipped) == 1 and "TRAIN050" in skipped[0]["path"]
