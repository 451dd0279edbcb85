"""Grids and input checks shared by the inpainter's training and its fills: the working grid around a region,
resampling onto it, and the phases-vs-model check."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from registration.image_io import same_grid

from registration.masks import body_mask
from .presets import CLASSICAL_METHODS, InpaintingError


# ---------------------------------------------------------------------------------------- grids, checks


def _check_case(phases: Mapping[str, sitk.Image], label: sitk.Image | None, where: str = "") -> list[str]:
    """Phase names in order; InpaintingError unless every image shares the first one's grid."""
    if not phases:
        raise InpaintingError(f"{where}no phases given")
    names = list(phases)
    ref = phases[names[0]]
    others = [(n, phases[n]) for n in names[1:]] + ([("label", label)] if label is not None else [])
    for name, image in others:
        if not same_grid(image, ref):
            raise InpaintingError(f"{where}{name} is not on the grid of {names[0]} (size {image.GetSize()} vs "
                                  f"{ref.GetSize()}); inpainting needs registered phases on one grid")
    return names


def _check_phases(model_phases: Sequence[str], data_phases: Sequence[str]) -> None:
    if set(model_phases) != set(data_phases):
        raise InpaintingError(f"the inpainter was trained on phases {list(model_phases)} but the data has phases "
                              f"{list(data_phases)}; train an inpainter on these phases or use a classical method "
                              f"({', '.join(CLASSICAL_METHODS)})")


def _grid_around(reference: sitk.Image, lo_xyz, hi_xyz, spacing_mm, margin_mm, min_size_xyz, multiple: int
                 ) -> sitk.Image:
    """An empty float image with the reference's direction and the working spacing, centred on the index box
    [lo_xyz, hi_xyz] of ``reference`` grown by ``margin_mm``, at least ``min_size_xyz`` voxels, sizes rounded up
    to ``multiple``."""
    ref_spacing = np.asarray(reference.GetSpacing(), float)
    spacing = np.asarray(spacing_mm, float)
    lo_mm = np.asarray(lo_xyz, float) * ref_spacing - margin_mm
    hi_mm = np.asarray(hi_xyz, float) * ref_spacing + margin_mm
    size = np.ceil((hi_mm - lo_mm) / spacing).astype(int) + 1
    size = np.maximum(size, np.asarray(min_size_xyz, int))
    size = (np.ceil(size / multiple) * multiple).astype(int)
    start_mm = (lo_mm + hi_mm) / 2 - (size - 1) / 2 * spacing
    direction = np.asarray(reference.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin(), float) + direction @ start_mm
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetOrigin([float(o) for o in origin])
    grid.SetDirection(reference.GetDirection())
    return grid


def _resample(image: sitk.Image, grid: sitk.Image, linear: bool = True, default: float = -1024.0) -> np.ndarray:
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(image, grid, sitk.Transform(), interpolator, default,
                        sitk.sitkFloat32 if linear else image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) inclusive index corners (z, y, x) of a non-empty mask."""
    idx = np.argwhere(mask)
    return idx.min(axis=0), idx.max(axis=0)


def _case_body(phases: Mapping[str, sitk.Image]) -> sitk.Image:
    """Body of registered phases: from their voxel-wise maximum, so no phase's body is cut off."""
    arrays = [sitk.GetArrayViewFromImage(img) for img in phases.values()]
    maximum = np.max(np.stack([np.asarray(a, np.float32) for a in arrays]), axis=0)
    return body_mask(_like(maximum, next(iter(phases.values()))))


def _far_from(mask: np.ndarray, margin_mm: float, spacing_zyx) -> np.ndarray:
    """Voxels farther than margin_mm from every voxel of mask (all True if the mask is empty)."""
    if not mask.any():
        return np.ones(mask.shape, bool)
    return ndimage.distance_transform_edt(~mask, sampling=spacing_zyx) > margin_mm


