"""Regions of interest around tumors: resampling to a fixed working spacing and back, HU normalisation, and
feathered blending into the normal CT.

An ROI is a cube of `size_vox` voxels at `spacing_mm` (isotropic), centred on a point of the case grid, so a
0.8 mm clinical scan and a 3 x 3 x 5 mm phantom scan show the networks tissue at the same scale. Arrays are
z-y-x (SimpleITK/nnU-Net order); voxel sizes are given x-y-z as SimpleITK reports them; positions are
fractional voxel indices (z, y, x). Image direction and origin play no part: an ROI is an axis-aligned cube in
the case's own index space, scaled by the voxel size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Decoded ROIs are not trusted within this many voxels of their faces (convolution padding).
EDGE_VOX = 2


@dataclass(frozen=True)
class ROISpec:
    size_vox: int
    spacing_mm: float

    @property
    def extent_mm(self) -> float:
        return self.size_vox * self.spacing_mm

    @property
    def usable_mm(self) -> float:
        """Physical length along each axis that a tumor plus its blend margin may occupy."""
        return (self.size_vox - 1 - 2 * EDGE_VOX) * self.spacing_mm


def _zyx(spacing_xyz) -> np.ndarray:
    return np.asarray(spacing_xyz, float)[::-1]


def resample_grid(volume: np.ndarray, start: np.ndarray, step: np.ndarray, shape, cval: float = 0.0,
                  order: int = 1) -> np.ndarray:
    """Sample `volume` ((Z, Y, X) or (C, Z, Y, X)) on the axis-aligned grid index = start + i * step.

    Where the grid is coarser than the volume (step > 1), the volume is first smoothed with a Gaussian of
    sigma = (step - 1) / 2 voxels (the anti-aliasing rule of scikit-image) so that noise is averaged, not
    aliased. Only the region the grid touches is filtered.
    """
    start, step, shape = np.asarray(start, float), np.asarray(step, float), np.asarray(shape, int)
    if volume.ndim == 4:
        return np.stack([resample_grid(v, start, step, shape, cval, order) for v in volume])
    sigma = np.maximum(step - 1.0, 0.0) / 2.0
    reach = np.ceil(4 * sigma).astype(int) + 2
    end = start + (shape - 1) * step
    lo = np.clip(np.floor(np.minimum(start, end)).astype(int) - reach, 0, volume.shape)
    hi = np.clip(np.ceil(np.maximum(start, end)).astype(int) + reach + 1, 0, volume.shape)
    if np.any(hi <= lo):  # grid entirely outside the volume
        return np.full(shape, cval, np.float32)
    crop = np.asarray(volume[tuple(slice(a, b) for a, b in zip(lo, hi))], np.float32)
    if sigma.any():
        crop = ndimage.gaussian_filter(crop, sigma, mode="nearest")
    return ndimage.affine_transform(crop, step, offset=start - lo, output_shape=tuple(shape), order=order,
                                    mode="constant", cval=cval).astype(np.float32)


def roi_start_step(centre_zyx, spacing_xyz, spec: ROISpec) -> tuple[np.ndarray, np.ndarray]:
    """ROI voxel i lies at case index start + i * step (per axis)."""
    step = spec.spacing_mm / _zyx(spacing_xyz)
    return np.asarray(centre_zyx, float) - (spec.size_vox - 1) / 2.0 * step, step


def extract_roi(volume: np.ndarray, spacing_xyz, centre_zyx, spec: ROISpec, cval: float = 0.0,
                order: int = 1) -> np.ndarray:
    """Cube of spec.size_vox**3 voxels at spec.spacing_mm around `centre_zyx` (fractional index)."""
    start, step = roi_start_step(centre_zyx, spacing_xyz, spec)
    return resample_grid(volume, start, step, (spec.size_vox,) * 3, cval, order)


def roi_box(shape, spacing_xyz, centre_zyx, spec: ROISpec) -> tuple[slice, slice, slice]:
    """Case voxels covered by the trusted interior of the ROI (its faces minus EDGE_VOX), clipped to `shape`."""
    start, step = roi_start_step(centre_zyx, spacing_xyz, spec)
    lo = np.ceil(start + EDGE_VOX * step - 1e-6).astype(int)
    hi = np.floor(start + (spec.size_vox - 1 - EDGE_VOX) * step + 1e-6).astype(int) + 1
    lo, hi = np.clip(lo, 0, shape[-3:]), np.clip(hi, 0, shape[-3:])
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def roi_to_case(roi: np.ndarray, spacing_xyz, centre_zyx, spec: ROISpec, box) -> np.ndarray:
    """Resample an ROI ((C,) n, n, n) back onto the case voxels of `box` (from :func:`roi_box`)."""
    start, step = roi_start_step(centre_zyx, spacing_xyz, spec)
    box_lo = np.array([b.start for b in box], float)
    box_shape = [b.stop - b.start for b in box]
    # case index p -> ROI coordinate (p - start) / step
    return resample_grid(roi, (box_lo - start) / step, 1.0 / step, box_shape, cval=0.0, order=1)


def component_centre(component: np.ndarray) -> np.ndarray:
    """Centre of the bounding box of a boolean mask (fractional index z, y, x)."""
    idx = np.argwhere(component)
    return (idx.min(0) + idx.max(0)) / 2.0


def component_extent_mm(component: np.ndarray, spacing_xyz) -> np.ndarray:
    idx = np.argwhere(component)
    return (idx.max(0) - idx.min(0) + 1) * _zyx(spacing_xyz)


def feather_weight(mask: np.ndarray, spacing_xyz, margin_mm: float) -> np.ndarray:
    """1 inside `mask`, falling linearly to 0 at `margin_mm` (Euclidean, in mm) outside it; 0 beyond."""
    mask = np.asarray(mask, bool)
    if margin_mm <= 0 or not mask.any():
        return mask.astype(np.float32)
    dist = ndimage.distance_transform_edt(~mask, sampling=_zyx(spacing_xyz))
    return np.clip(1.0 - dist / margin_mm, 0.0, 1.0).astype(np.float32)


def blend(normal: np.ndarray, synthetic: np.ndarray, weight: np.ndarray, box) -> None:
    """In place: normal[..., box] = w * synthetic + (1 - w) * normal where w > 0; untouched elsewhere."""
    region = normal[(Ellipsis, *box)]
    w = weight > 0
    region[..., w] = weight[w] * synthetic[..., w] + (1.0 - weight[w]) * region[..., w]


def add_change(image: np.ndarray, change: np.ndarray, weight: np.ndarray, box) -> None:
    """In place: image[..., box] += w * change where w > 0; untouched elsewhere."""
    region = image[(Ellipsis, *box)]
    w = weight > 0
    region[..., w] += weight[w] * change[..., w]
