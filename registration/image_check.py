"""Proving that an input image file is whole before SimpleITK reads it.

SimpleITK does all the reading; this module only proves completeness. ITK's readers do not: a ``.nii.gz`` cut
at 50 % (a copy that stopped, a full disk, a download that broke off) is read without any error, the missing
voxels filled with zeros, and a truncated ``.nii``, ``.mha`` or ``.nrrd`` likewise. So before a file is handed to
SimpleITK, :func:`check_complete` checks what the format itself promises:

* gzip data (``.nii.gz``, NRRD ``encoding: gzip``) is decompressed to its end: the end-of-stream marker and the
  trailer (CRC-32 and length) must be there and match (Python's gzip module raises otherwise); likewise bzip2
  (NRRD) and zlib (MetaImage ``CompressedData = True``) streams must reach their end marker;
* the voxel payload is at least as long as the header says: NIfTI ``vox_offset + prod(dim) * bitpix / 8``;
  MetaImage header length + ``prod(DimSize) * channels * element size``; NRRD header length + ``prod(sizes) *
  type size``; for uncompressed data this is simply the file size (or the detached data file's size).

Where a header cannot be parsed here (an unusual variant, ASCII data, a file list) the size check is skipped and
SimpleITK's own reader decides; this module never rejects a file it does not understand. Problems raise
:class:`IncompleteImageError` whose message (without the file name, which the caller adds) is one line ending in
the fix. DICOM folders are not checked here.
"""
from __future__ import annotations

import bz2
import math
import os
import re
import struct
import zlib
from pathlib import Path

FIX = "re-export or copy the file again"
_CHUNK = 1 << 20
_MAX_TEXT_HEADER = 1 << 16  # MetaImage / NRRD headers are text lines far shorter than this

# Lower bounds of the element size in bytes: the size check only proves "at least as long", so a type whose size
# varies by platform counts with its smallest size. Types missing here skip the size check.
_META_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}
_NRRD_SIZES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                     "uint64_t", "double"), 8),
}


class IncompleteImageError(ValueError):
    """The file is shorter than its header promises, or its compressed stream is cut or corrupt."""


def _truncated(have: int, expected: int, what: str) -> IncompleteImageError:
    return IncompleteImageError(f"truncated: {have} {what} of {expected} expected from the header; {FIX}")


# ------------------------------------------------------------------------------------------------ streams


class _Cut(Exception):
    """The compressed stream ended before its end-of-stream marker."""


def _decompressor(kind: str):
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return zlib.decompressobj(31 if kind == "gzip" else 15)  # 31: gzip header and trailer (CRC-32, length)


def _inflate(fh, kind: str):
    """Yield the decompressed chunks of the ``kind`` ("gzip", "zlib" or "bzip2") stream read from ``fh``.

    zlib/bz2 check the end-of-stream marker (``eof``) and, for gzip, the trailer's CRC-32 and length; a stream
    that stops before its marker raises _Cut, corrupt data IncompleteImageError. Concatenated gzip members (as
    gzip allows) are read one after the other; zero padding after the last one is ignored, as gzip does."""
    d = _decompressor(kind)
    pending = b""
    try:
        while True:
            data, pending = pending or fh.read(_CHUNK), b""
            if not data:
                break
            out = d.decompress(data)
            if out:
                yield out
            if d.eof:
                if kind != "gzip":
                    return  # the stream is complete; what follows it is not ours to judge
                rest = d.unused_data or fh.read(_CHUNK)
                while rest and not rest.strip(b"\0"):
                    rest = fh.read(_CHUNK)
                if not rest:
                    return
                d, pending = _decompressor(kind), rest  # another gzip member follows
        if not d.eof:
            raise _Cut
    except (zlib.error, OSError, EOFError, ValueError) as err:
        raise IncompleteImageError(f"corrupt {kind} data ({err}); {FIX}") from None


def _inflated_length(fh, kind: str, expected: int | None) -> int:
    """The uncompressed length of the stream in ``fh``, proving it complete (see :func:`_inflate`)."""
    total = 0
    try:
        for chunk in _inflate(fh, kind):
            total += len(chunk)
    except _Cut:
        raise _cut_error(kind, total, expected) from None
    return total


def _cut_error(kind: str, total: int, expected: int | None) -> IncompleteImageError:
    if expected is not None:
        return IncompleteImageError(f"truncated: the {kind} stream ends after {total} of {expected} uncompressed "
                                    f"bytes expected from the header; {FIX}")
    return IncompleteImageError(f"truncated: the {kind} stream ends before its end-of-stream marker, after {total} "
                                f"uncompressed bytes; {FIX}")


# ------------------------------------------------------------------------------------------------ NIfTI


def nifti_expected_bytes(header: bytes) -> int | None:
    """``vox_offset + prod(dim) * bitpix / 8`` from a NIfTI-1 or NIfTI-2 header (either byte order); None if
    ``header`` is not one (too short or an unknown ``sizeof_hdr``)."""
    if len(header) < 4:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348:
            dim = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
            minimum_offset = 352
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            (bitpix,) = struct.unpack(endian + "h", header[14:16])
            dim = struct.unpack(endian + "8q", header[16:80])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
            minimum_offset = 544
            break
    else:
        return None
    ndim = dim[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or not math.isfinite(vox_offset) or any(d < 0 for d in dim[1:ndim + 1]):
        return None  # not a header this check understands: SimpleITK decides
    voxels = math.prod(dim[1:ndim + 1])
    return max(int(vox_offset), minimum_offset) + voxels * bitpix // 8


def _check_nifti(path: Path, compressed: bool) -> None:
    if compressed:
        with open(path, "rb") as fh:
            start = fh.read(4)
        compressed = start[:2] == b"\x1f\x8b"
        if not compressed and len(start) == 4 and {int.from_bytes(start, "little"), int.from_bytes(start, "big")} & {
                348, 540}:  # a NIfTI-1/2 header: ITK (zlib) would read it silently; the name says otherwise
            raise IncompleteImageError("named .nii.gz but not gzip-compressed (a plain .nii renamed); rename it to "
                                       ".nii, or compress it with gzip")
    if compressed:
        header, total, expected = b"", 0, None
        with open(path, "rb") as fh:
            try:
                for chunk in _inflate(fh, "gzip"):
                    if len(header) < 540:
                        header += chunk[:540 - len(header)]
                        if len(header) == 540:
                            expected = nifti_expected_bytes(header)
                    total += len(chunk)
            except _Cut:
                raise _cut_error("gzip", total, nifti_expected_bytes(header) if expected is None else expected
                                 ) from None
        if expected is None:
            expected = nifti_expected_bytes(header)
        if expected is not None and total < expected:
            raise _truncated(total, expected, "uncompressed bytes")
        return
    with open(path, "rb") as fh:
        header = fh.read(540)
    expected = nifti_expected_bytes(header)  # None: not a NIfTI header (or cut inside it): SimpleITK decides
    size = path.stat().st_size
    if expected is not None and size < expected:
        raise _truncated(size, expected, "bytes")


# ------------------------------------------------------------------------------------------------ MetaImage, NRRD


def _text_header(path: Path, end: re.Pattern[bytes]) -> tuple[bytes, int] | None:
    """(header text, offset of the first data byte) where ``end`` matches the header's last line; None if not
    found in the first 64 KiB."""
    with open(path, "rb") as fh:
        head = fh.read(_MAX_TEXT_HEADER)
    match = end.search(head)
    if match is None:
        return None
    return head[:match.end()], match.end()


def _data_file(header_path: Path, value: str) -> Path | None:
    """A detached data file named in a header; None for the attached case or lists/patterns (not checked)."""
    value = value.strip()
    if not value or value.upper() == "LOCAL" or value.upper().startswith("LIST") or "%" in value or " " in value:
        return None
    return header_path.parent / value


def _check_payload(path: Path, offset: int, expected: int | None, encoding: str) -> None:
    """Data of ``path`` from byte ``offset`` on, stored raw or as a gzip/bzip2/zlib stream."""
    if encoding == "raw":
        if expected is not None:
            have = path.stat().st_size - offset
            if have < expected:
                raise _truncated(max(have, 0), expected, "bytes of voxel data")
        return
    with open(path, "rb") as fh:
        fh.seek(offset)
        length = _inflated_length(fh, encoding, expected)
    if expected is not None and length < expected:
        raise _truncated(length, expected, "uncompressed bytes of voxel data")


def _ints(text: str) -> list[int] | None:
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        return None


def _check_meta(path: Path) -> Path | None:
    found = _text_header(path, re.compile(rb"^[ \t]*ElementDataFile[ \t]*=[^\n]*\n", re.MULTILINE))
    if found is None:
        return  # no data-file line: not a header this check understands
    text, offset = found
    fields = {}
    for line in text.decode("latin-1").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    if fields.get("BinaryData", "True").lower() not in ("true", "1"):
        return  # ASCII voxels
    dims = _ints(fields.get("DimSize", ""))
    element = _META_SIZES.get(fields.get("ElementType", "").replace("_ARRAY", ""))
    channels = _ints(fields.get("ElementNumberOfChannels", "1"))
    expected = math.prod(dims) * element * channels[0] if dims and element and channels else None
    header_size = _ints(fields.get("HeaderSize", "0"))
    if not header_size or header_size[0] < 0:
        return  # -1: data at the end of the file, cannot be located from the header
    compressed = fields.get("CompressedData", "False").lower() in ("true", "1")
    data_file = _data_file(path, fields.get("ElementDataFile", ""))
    if data_file is None:
        if fields.get("ElementDataFile", "").upper() != "LOCAL":
            return  # a list of slice files or a pattern: not checked
        data_file = path
    else:
        if not data_file.is_file():
            raise IncompleteImageError(f"its data file {data_file.name} is missing; put it next to {path.name}")
        offset = header_size[0]  # bytes to skip at the start of a detached data file
    _check_payload(data_file, offset, expected, "zlib" if compressed else "raw")
    return data_file


def _check_nrrd(path: Path) -> Path | None:
    found = _text_header(path, re.compile(rb"\r?\n\r?\n|\Z"))  # a detached header (.nhdr) may just end
    if found is None or not found[0].startswith(b"NRRD"):
        return
    text, offset = found
    fields = {}
    for line in text.decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    sizes = _ints(fields.get("sizes", ""))
    element = _NRRD_SIZES.get(" ".join(fields.get("type", "").split()).lower())
    expected = math.prod(sizes) * element if sizes and element else None
    encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}.get(
        fields.get("encoding", "").lower())
    if encoding is None:
        return  # ASCII or hex voxels
    if _ints(fields.get("lineskip", "0")) != [0]:
        return
    skip = _ints(fields.get("byteskip", "0"))
    if not skip or skip[0] < 0:
        return  # -1: data at the end of the file
    data_value = fields.get("datafile")
    if data_value is not None:
        data_file = _data_file(path, data_value)
        if data_file is None:
            return
        if not data_file.is_file():
            raise IncompleteImageError(f"its data file {data_file.name} is missing; put it next to {path.name}")
        offset = 0
    else:
        data_file = path
    _check_payload(data_file, offset + skip[0], expected, encoding)
    return data_file


# ------------------------------------------------------------------------------------------------ entry point


def check_complete(path: str | os.PathLike[str]) -> list[Path]:
    """Raise IncompleteImageError if the image file at ``path`` is shorter than its header promises or its
    compressed stream is cut off or corrupt. Formats and folders it does not know pass unchecked.

    Returns the files whose content was checked: ``path`` and, for a detached header (.mhd, .nhdr), its data file.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lower = path.name.lower()
    data_file = None
    if lower.endswith(".nii.gz"):
        _check_nifti(path, compressed=True)
    elif lower.endswith(".nii"):
        _check_nifti(path, compressed=False)
    elif lower.endswith((".mha", ".mhd")):
        data_file = _check_meta(path)
    elif lower.endswith((".nrrd", ".nhdr")):
        data_file = _check_nrrd(path)
    return [path] if data_file is None or data_file == path else [path, data_file]


def detached_data_file(path: str | os.PathLike[str]) -> Path | None:
    """The data file a detached header (.mhd, .nhdr) names, without reading any voxel; None for single-file
    formats, an attached header, or a list/pattern of files."""
    path = Path(path)
    lower = path.name.lower()
    if not path.is_file() or not lower.endswith((".mhd", ".mha", ".nhdr", ".nrrd")):
        return None
    if lower.endswith((".mhd", ".mha")):
        found = _text_header(path, re.compile(rb"^[ \t]*ElementDataFile[ \t]*=[^\n]*\n", re.MULTILINE))
        if found is None:
            return None
        value = found[0].decode("latin-1").splitlines()[-1].split("=", 1)[1]
    else:
        found = _text_header(path, re.compile(rb"\r?\n\r?\n|\Z"))
        if found is None:
            return None
        lines = [ln for ln in found[0].decode("latin-1").splitlines() if ln.lower().replace(" ", "").startswith(
            ("datafile:", "data_file:"))]
        if not lines:
            return None
        value = lines[0].split(":", 1)[1]
    data_file = _data_file(path, value)
    return data_file if data_file is not None and data_file != path else None
