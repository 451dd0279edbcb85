"""Writing files so that readers never see a half-written one: the one home of the project's atomic writes.

Every stage of the pipeline writes its outputs through these functions (images: :func:`write_image_atomic`; JSON
records, text, CSV, checkpoints: :func:`write_json_atomic`, :func:`write_text_atomic`, :func:`write_atomic`):
the content is written to a temporary file of a unique name next to the target (two processes or shards never
share one) and then renamed over it. A crash or Ctrl-C mid-write therefore leaves either the old file or no file,
never a truncated one that a later stage (or a resumed run) would mistake for a result, and the temporary file
is removed. Temporary names start with a dot, so folder listings that skip hidden entries never see them.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import SimpleITK as sitk

# Formats that store header and voxels in two files: the header names the data file, so renaming the header
# after writing would leave it pointing at the temporary data file name.
_TWO_FILE_SUFFIXES = (".mhd", ".nhdr", ".hdr")


def write_image_atomic(image: sitk.Image, path: str | os.PathLike[str]) -> None:
    """Write ``image`` to ``path`` (compressed where the format allows) atomically.

    The image goes to ``.tmp-<uuid>-<NAME>`` in the same folder (same file system, so the final ``os.replace``
    is atomic; the real extension is kept so ITK picks the right writer), which then replaces ``path``. On any
    failure the temporary file is removed and the exception propagates; an existing ``path`` is left untouched.

    Raises ValueError for two-file formats (.mhd, .nhdr, .hdr), which cannot be renamed atomically.
    """
    path = Path(path)
    if path.name.lower().endswith(_TWO_FILE_SUFFIXES):
        raise ValueError(
            f"{path}: write_image_atomic needs a single-file format (.nii.gz, .nii, .mha, .nrrd), "
            f"not {path.suffix}"
        )
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO], Any], binary: bool = False,
                 make_parents: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path`` (text mode, UTF-8, unless ``binary``), then
    rename it onto ``path``. On any failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with (open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="")) as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str, make_parents: bool = False) -> Path:
    return write_atomic(path, lambda handle: handle.write(text), make_parents=make_parents)


def write_json_atomic(path: str | os.PathLike[str], data: Any, make_parents: bool = False) -> Path:
    """``data`` as indented JSON (indent 1, the project's record style)."""
    return write_text_atomic(path, json.dumps(data, indent=1), make_parents=make_parents)


def same_grid(image: sitk.Image, other: sitk.Image, spacing_rtol: float = 1e-3, origin_atol_mm: float = 1e-2,
              direction_atol: float = 1e-3) -> bool:
    """Whether two images share one voxel grid (size, spacing, origin, direction), within header rounding: the
    test before voxels of one are read as voxels of the other (a mask on its image, phases written on one grid)."""
    return (image.GetSize() == other.GetSize()
            and np.allclose(image.GetSpacing(), other.GetSpacing(), rtol=spacing_rtol)
            and np.allclose(image.GetOrigin(), other.GetOrigin(), atol=origin_atol_mm)
            and np.allclose(image.GetDirection(), other.GetDirection(), atol=direction_atol))
