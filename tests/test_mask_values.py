"""Mask binarisation can refuse a mask but never erase a lesion silently: {0,1}, {0,255},
anti-aliased, JPEG-noisy and mixed masks (fedmix_jax.data.real.imaging, module docstring)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fedmix_jax.data.real.errors import BadInputError
from fedmix_jax.data.real.imaging import binarize_mask, load_mask
from hang_alarm import alarm_fixture  # noqa: E402


alarm = alarm_fixture(60)


def _lesion(value=1):
    arr = np.zeros((40, 50), np.uint8)
    arr[10:16, 20:27] = value          # 42 px
    return arr


@pytest.mark.parametrize("value", [1, 255])
def test_pure_masks(value):
    np.testing.assert_array_equal(binarize_mask(_lesion(value), "m.png"), _lesion(1) == 1)
    assert not binarize_mask(np.zeros((4, 4), np.uint8), "m.png").any()


@pytest.mark.parametrize("stray", ["inside", "elsewhere", "many_elsewhere"])
def test_zero_one_mask_with_stray_bright_pixels_is_refused(stray):
    arr = _lesion(1)
    if stray == "inside":
        arr[12, 22] = 255
    elif stray == "elsewhere":
        arr[35, 5] = 255
    else:
        arr[30:38, 2:12] = 255        # 80 bright px, more than the lesion's 42
    with pytest.raises(BadInputError, match="mask mixes values"):
        binarize_mask(arr, "m.png")


def test_anti_aliased_png_is_thresholded(tmp_path):
    im = Image.new("L", (480, 360), 0)
    ImageDraw.Draw(im).ellipse((80, 60, 360, 280), fill=255)
    big = im.resize((120, 90), Image.BILINEAR)     # soft (anti-aliased) edges
    arr = np.asarray(big)
    assert ((arr > 0) & (arr < 255)).any()
    big.save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(str(tmp_path / "m.png")), arr > 127)


def test_jpeg_noise_is_thresholded_but_a_jpeg_zero_one_mask_with_strays_is_refused(tmp_path):
    arr = np.zeros((180, 240), np.uint8)
    yy, xx = np.mgrid[:180, :240]
    arr[(yy - 90) ** 2 + (xx - 120) ** 2 < 50 ** 2] = 255
    for q in (75, 95):
        Image.fromarray(arr).save(tmp_path / "m.jpg", quality=q)
        got = load_mask(str(tmp_path / "m.jpg"))
        assert abs(int(got.sum()) - int((arr > 0).sum())) < 0.05 * (arr > 0).sum()
    mixed = _lesion(1)
    mixed[0, 0] = 255
    buf = io.BytesIO()
    Image.fromarray(mixed).save(buf, "JPEG", quality=100)
    (tmp_path / "mixed.jpg").write_bytes(buf.getvalue())
    with pytest.raises(BadInputError, match="mask mixes values"):
        load_mask(str(tmp_path / "mixed.jpg"))


def test_label_map_still_not_binary():
    arr = _lesion(1)
    arr[30:35, 30:35] = 2
    with pytest.raises(BadInputError, match="not binary"):
        binarize_mask(arr, "m.png")
