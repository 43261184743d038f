"""A strict reader of MetaImage volumes (``.mhd`` + ``.raw``/``.zraw``, or ``.mha``) for untrusted
folders: :func:`read_header` checks the header and file sizes before anything is allocated,
:func:`read_volume` returns ``DimSize = X Y Z`` as [Z, Y, X]; every failure is a
:class:`BadInputError` naming the file. Details: docs/data_faults.md.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zlib

import numpy as np

from fedmix_jax.data.real.errors import BadInputError, open_regular

MAX_HEADER_BYTES = 64 * 1024
MAX_SIDE = 1 << 15                 # 32768 voxels along any axis
MAX_VOLUME_BYTES = 1 << 29         # 512 MiB decoded (the largest RETOUCH volume is 64 MiB)
ELEMENT_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2",
                 "MET_UINT": "u4", "MET_INT": "i4", "MET_ULONG_LONG": "u8",
                 "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class MetaHeader:
    """A validated header: ``shape`` [Z, Y, X] (NumPy order), ``dtype`` (with byte order), the
    data file, the offset of the data in it, and whether it is zlib-compressed."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data_path: str
    offset: int
    compressed: bool
    compressed_size: int | None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _bad(path: str, what: str) -> BadInputError:
    return BadInputError(f"bad MetaImage volume {path}: {what}", path)


def _split_header(path: str, raw: bytes) -> tuple[dict[str, str], int]:
    """``(fields, offset of the data after the ElementDataFile line)``."""
    fields: dict[str, str] = {}
    pos = 0
    for line in io.BytesIO(raw):   # each line with its b"\n"
        pos += len(line)
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _bad(path, f"header line {len(fields) + 1} is not text (a binary file "
                             "named .mhd/.mha?)") from None
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep:
            raise _bad(path, f"header line {text[:60]!r} is not 'Key = Value'")
        key = key.strip()
        fields[key] = value.strip()
        if key == "ElementDataFile":      # always the last field; LOCAL data follows it
            return fields, pos
    raise _bad(path, "its header has no ElementDataFile field (or is longer than "
                     f"{MAX_HEADER_BYTES // 1024} KiB)")


def _int_list(path: str, key: str, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split()]
    except ValueError:
        raise _bad(path, f"{key} = {value[:60]!r} is not a list of integers") from None


def _flag(path: str, fields: dict, key: str) -> bool:
    value = fields.get(key, "False").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise _bad(path, f"{key} = {fields[key][:20]!r} is not True or False")
    return value in ("true", "1")


def _data_file(path: str, name: str) -> str:
    """The data file named by ``ElementDataFile``, which must stay inside the header's folder."""
    if "%" in name or name.upper().startswith("LIST") or len(name.split()) > 1:
        raise _bad(path, f"ElementDataFile = {name!r}: file lists and numbered file patterns "
                         "are not read; store the volume in one .raw/.zraw file")
    folder = os.path.dirname(os.path.abspath(path))
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or not name:
        raise _bad(path, f"ElementDataFile = {name!r} leaves the volume's folder (absolute "
                         "paths and '..' are refused); name a file next to the header")
    data = os.path.join(folder, *parts)
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(data)
    if not real.startswith(real_folder.rstrip(os.sep) + os.sep):
        raise _bad(path, f"ElementDataFile = {name!r} resolves to {real}, outside the volume's "
                         f"folder {real_folder} (a symbolic link?)")
    return data


def read_header(path: str) -> MetaHeader:
    """Parse and validate the header of ``path`` (``.mhd`` or ``.mha``), and check its data file's
    kind and size against it. Reads at most :data:`MAX_HEADER_BYTES` of the header."""
    path = os.fspath(path)
    with open_regular(path, "MetaImage header") as f:
        raw = f.read(MAX_HEADER_BYTES)
    fields, offset = _split_header(path, raw)
    if fields.get("ObjectType", "Image").strip().lower() != "image":
        raise _bad(path, f"ObjectType = {fields['ObjectType'][:30]!r}, expected Image")
    for key in ("NDims", "DimSize", "ElementType"):
        if key not in fields:
            raise _bad(path, f"its header has no {key} field")
    ndims = _int_list(path, "NDims", fields["NDims"])
    dims = _int_list(path, "DimSize", fields["DimSize"])
    if len(ndims) != 1 or not 1 <= ndims[0] <= 4 or len(dims) != ndims[0]:
        raise _bad(path, f"NDims = {fields['NDims'][:20]} with DimSize = "
                         f"{fields['DimSize'][:60]} (needs 1-4 dimensions, one size each)")
    if any(d < 1 or d > MAX_SIDE for d in dims):
        raise _bad(path, f"DimSize = {fields['DimSize'][:60]}: every size must be 1-{MAX_SIDE}")
    etype = fields["ElementType"].strip().upper()
    if etype not in ELEMENT_TYPES:
        raise _bad(path, f"ElementType = {etype[:30]} is not read (known: "
                         f"{', '.join(ELEMENT_TYPES)})")
    channels = _int_list(path, "ElementNumberOfChannels",
                         fields.get("ElementNumberOfChannels", "1"))
    if channels != [1]:
        raise _bad(path, "ElementNumberOfChannels must be 1 (one grey value per voxel)")
    if not _flag(path, {"BinaryData": "True", **fields}, "BinaryData"):
        raise _bad(path, "BinaryData = False (ASCII voxel data) is not read")
    if _int_list(path, "HeaderSize", fields.get("HeaderSize", "0")) != [0]:
        raise _bad(path, f"HeaderSize = {fields['HeaderSize'][:20]} is not read (only 0)")
    msb = any(_flag(path, fields, k) for k in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB"))
    dtype = np.dtype((">" if msb else "<") + ELEMENT_TYPES[etype])
    compressed = _flag(path, fields, "CompressedData")
    csize = _int_list(path, "CompressedDataSize", fields.get("CompressedDataSize", "1"))
    if len(csize) != 1 or csize[0] < 1:
        raise _bad(path, f"CompressedDataSize = {fields['CompressedDataSize'][:20]}")
    name = fields["ElementDataFile"].strip()
    data_path, offset = (path, offset) if name.upper() == "LOCAL" else (_data_file(path, name), 0)
    header = MetaHeader(path=path, shape=tuple(reversed(dims)), dtype=dtype, data_path=data_path,
                        offset=offset, compressed=compressed,
                        compressed_size=csize[0] if "CompressedDataSize" in fields else None)
    if header.nbytes > MAX_VOLUME_BYTES:
        raise _bad(path, f"DimSize = {fields['DimSize'][:60]} of {etype} is "
                         f"{header.nbytes / 2**20:.0f} MiB, more than the "
                         f"{MAX_VOLUME_BYTES >> 20} MiB a volume may have")
    with open_regular(data_path, "MetaImage data file") as f:
        _check_stored_size(header, os.fstat(f.fileno()).st_size - offset)
    return header


def _check_stored_size(h: MetaHeader, stored: int) -> None:
    where = h.data_path if h.data_path != h.path else f"{h.path} (after its header)"
    if not h.compressed and stored != h.nbytes:
        raise _bad(h.path, f"its data file {where} holds {stored} bytes but DimSize x element "
                           f"size is {h.nbytes} bytes (truncated data, or a header that does "
                           "not describe it)")
    if h.compressed and h.compressed_size is not None and stored != h.compressed_size:
        raise _bad(h.path, f"its data file {where} holds {stored} bytes but CompressedDataSize "
                           f"is {h.compressed_size}")
    if h.compressed and stored < 1:
        raise _bad(h.path, f"its data file {where} is empty")


def _inflate(h: MetaHeader, f, out: np.ndarray) -> None:
    """Decode the zlib/gzip stream of ``f`` into ``out`` (uint8 [h.nbytes]), <= 1 byte past it."""
    d = zlib.decompressobj(47)            # 32 + 15: zlib or gzip header, as MetaIO writes
    filled, total = 0, h.nbytes
    where = h.data_path
    try:
        while not d.eof:
            chunk = d.unconsumed_tail or f.read(_CHUNK)
            if not chunk:
                break
            piece = d.decompress(chunk, total - filled + 1)
            if filled + len(piece) > total:
                raise _bad(h.path, f"the compressed data in {where} decodes to more than the "
                                   f"{total} bytes of DimSize (refused before decoding the rest)")
            out[filled:filled + len(piece)] = np.frombuffer(piece, np.uint8)
            filled += len(piece)
    except zlib.error as e:
        raise _bad(h.path, f"CompressedData = True but {where} is not valid zlib data ({e}); "
                           "is it an uncompressed .raw? Set CompressedData = False") from None
    if not d.eof or filled != total:
        raise _bad(h.path, f"the compressed data in {where} ends after {filled} of the {total} "
                           "bytes of DimSize (truncated)")


def read_volume(path: str) -> np.ndarray:
    """The validated volume of header ``path`` as ``[Z, Y, X]`` in its stored dtype (native
    byte order); a :class:`BadInputError` for anything refused (also NaN or infinite voxels)."""
    h = read_header(path)
    buf = np.empty(h.nbytes, np.uint8)
    with open_regular(h.data_path, "MetaImage data file") as f:
        _check_stored_size(h, os.fstat(f.fileno()).st_size - h.offset)   # changed since?
        f.seek(h.offset)
        if h.compressed:
            _inflate(h, f, buf)
        elif f.readinto(memoryview(buf)) != h.nbytes:
            raise _bad(h.path, f"its data file {h.data_path} is shorter than announced")
    vol = buf.view(h.dtype).reshape(h.shape)
    if not vol.dtype.isnative:
        vol = vol.astype(vol.dtype.newbyteorder("="))
    if vol.dtype.kind == "f":
        if bad := int(vol.size - np.count_nonzero(np.isfinite(vol))):
            raise _bad(h.path, f"{bad} voxel(s) are NaN or infinite; a volume must be finite")
    return vol
