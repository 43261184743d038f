"""Decoding and resizing of image and mask files (Pillow + NumPy): :func:`load_image` (uint8
[S, S, Cin]), :func:`load_mask` and :func:`binarize_mask` (bool [H, W]), :func:`resize_mask`.
Only regular files are opened, and a header announcing more than ``PIL.Image.MAX_IMAGE_PIXELS``
pixels is refused. Details: docs/data.md ("Decoding"), docs/data_faults.md (mask values).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
from PIL import Image

from fedmix_jax.data.real.errors import BadInputError, open_regular

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NON_BINARY_FRACTION = 0.05
MASK_THRESHOLD = 127
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "JPEG2000")

_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning, IndexError, TypeError, KeyError, MemoryError)


@contextlib.contextmanager
def _opened(path: str, what: str):
    """The Pillow image of ``path``; a failure or a bomb (Pillow only warns below 2x) is refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with open_regular(path, what) as f, Image.open(f) as im:
                yield im
        except BadInputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadInputError(
                f"cannot read {what} {path}: its header announces an enormous image, a possible "
                f"decompression bomb ({e}); images above PIL.Image.MAX_IMAGE_PIXELS="
                f"{Image.MAX_IMAGE_PIXELS} pixels are refused", path) from None
        except _READ_ERRORS as e:
            raise BadInputError(f"cannot read {what} {path}: {type(e).__name__}: {e}", path) from e


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def _convert(im: Image.Image, channels: int) -> Image.Image:
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):   # scaled by the max ([0, 1]: x255)
        arr = np.asarray(im, np.float64)
        m = float(arr.max()) if arr.size else 0.0
        arr = np.round(arr * (255.0 / max(m, 1.0))) if m > 0 else np.zeros(arr.shape)
        im, mode = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L"), "L"
    if channels == 3:
        return im if mode == "RGB" else im.convert("RGB")
    if mode in ("L", "1"):
        return im if mode == "L" else im.convert("L")
    return (im if mode == "RGB" else im.convert("RGB")).convert("L")


def load_image(path: str, size: int, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode, convert and resize one image: ``(uint8 [size, size, channels], (orig_height,
    orig_width))``; a :class:`BadInputError` naming ``path`` when it cannot be decoded."""
    with _opened(path, "image") as im:
        w, h = im.size
        if im.format == "JPEG":
            im.draft("L" if channels == 1 else "RGB", (size, size))
        im.load()
        im = _convert(im, channels)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.ascontiguousarray(arr), (h, w)


def _mask_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, np.uint8)
    if mode in ("L", "P"):
        return np.asarray(im)
    if mode in ("LA", "PA"):
        return np.asarray(im)[..., 0]
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        a = np.asarray(im.convert("RGB") if mode in ("CMYK", "YCbCr") else im)
        return a[..., :3].max(axis=-1)
    if mode == "F":
        a = np.asarray(im, np.float64)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    a = np.asarray(im).astype(np.int64)  # I, I;16...
    if a.size and a.max() > 255:
        a = (a * 255) // 65535
    return np.clip(a, 0, 255).astype(np.uint8)


def binarize_mask(arr: np.ndarray, path: str, lossy: bool = False) -> np.ndarray:
    """2-D mask array [H, W] -> bool foreground [H, W], with the rules of the module docstring
    (``lossy``: the file is JPEG-like, whose compression scatters dim specks)."""
    arr = np.asarray(arr)
    m = int(arr.max()) if arr.size else 0
    if m == 0:
        return np.zeros(arr.shape, bool)
    if m == 1:
        return arr == 1
    if m <= MASK_THRESHOLD:
        vals = np.unique(arr)
        raise BadInputError(
            f"mask is not binary: {path} has values {vals[:8].tolist()}"
            f"{' ...' if vals.size > 8 else ''} (max {m}); expected {{0, 1}} or {{0, 255}} "
            f"(foreground = value > {MASK_THRESHOLD} of 255)", path)
    frac = float(((arr != 0) & (arr != m)).mean())
    if frac > NON_BINARY_FRACTION:
        raise BadInputError(
            f"mask is not binary: {path} has {100 * frac:.1f}% of its pixels neither 0 nor {m} "
            f"(more than {100 * NON_BINARY_FRACTION:.0f}% allowed for anti-aliased edges); "
            f"expected {{0, 1}} or {{0, 255}}", path)
    bright = arr > MASK_THRESHOLD
    if problem := _mixed_values(arr, bright, lossy):
        raise BadInputError(
            f"mask mixes values: {path} {problem}; thresholding at {MASK_THRESHOLD} would erase "
            "that foreground (a {0, 1} mask with stray bright pixels?). Save it as {0, 1} or "
            "{0, 255}", path)
    return bright


def _mixed_values(arr: np.ndarray, bright: np.ndarray, lossy: bool) -> str:
    """Why thresholding ``arr`` at 127 could erase foreground (module docstring), or ''."""
    dim = (arr > 0) & ~bright
    if not dim.any():
        return ""
    nb = int(bright.sum())
    if lossy:
        ones = int((arr == 1).sum())
        return (f"has {ones} pixels of value 1 but only {nb} above {MASK_THRESHOLD}"
                if ones > nb else "")
    from scipy import ndimage  # noqa: PLC0415

    near = ndimage.binary_dilation(bright, structure=np.ones((5, 5), bool))
    far = int((dim & ~near).sum())
    if far:
        return (f"has {far} pixels of values 1-{MASK_THRESHOLD} farther than 2 px from any "
                f"pixel above {MASK_THRESHOLD}")
    labels, n = ndimage.label(arr > 0, structure=np.ones((3, 3), bool))
    idx = np.arange(1, n + 1)
    nd = ndimage.sum(dim, labels, idx)
    nbr = ndimage.sum(bright, labels, idx)
    worst = int(np.argmax(nd - nbr))
    if nd[worst] > nbr[worst]:
        return (f"has a region of {int(nd[worst])} pixels of values 1-{MASK_THRESHOLD} around "
                f"only {int(nbr[worst])} above {MASK_THRESHOLD}")
    return ""


def load_mask(path: str, image_hw: tuple[int, int] | None = None, image_path: str | None = None
              ) -> np.ndarray:
    """Decode one mask file to a bool [H, W] array, checking its size against the image's."""
    with _opened(path, "mask") as im:
        im.load()
        arr = _mask_array(im)
        lossy = im.format in LOSSY_FORMATS
    if image_hw is not None and tuple(arr.shape[:2]) != tuple(image_hw):
        raise BadInputError(
            f"mask size differs from its image: {path} is {arr.shape[1]}x{arr.shape[0]} (WxH) but "
            f"{image_path or 'the image'} is {image_hw[1]}x{image_hw[0]}", path)
    return binarize_mask(arr, path, lossy=lossy)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool [H, W] -> bool [size, size] with nearest-neighbour sampling."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    im = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((size, size), Image.NEAREST)
    return np.asarray(im) > MASK_THRESHOLD
