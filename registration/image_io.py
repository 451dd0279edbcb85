"""Writing images so that readers never see a half-written file.

Every stage of the pipeline writes its outputs through :func:`write_image_atomic`: the image is written to a
temporary file next to the target and then renamed over it. A crash or Ctrl-C mid-write therefore leaves either
the old file or no file, never a truncated one that a later stage (or a resumed run) would mistake for a result.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

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
