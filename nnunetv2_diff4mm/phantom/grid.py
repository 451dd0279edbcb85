"""A regular axis-aligned grid in physical (LPS, mm) space, and conversions to SimpleITK images.

Arrays follow SimpleITK's numpy order (z, y, x); physical vectors are (x, y, z) like ITK.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    origin: tuple[float, float, float]  # physical position of voxel (0, 0, 0), mm
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]  # (nx, ny, nz)

    @classmethod
    def covering(cls, lower, upper, spacing) -> "Grid":
        """Smallest grid with the given spacing whose voxel centres span [lower, upper] (mm, per axis)."""
        lower = np.asarray(lower, float)
        extent = np.asarray(upper, float) - lower
        size = np.maximum(1, np.ceil(extent / np.asarray(spacing)).astype(int) + 1)
        return cls(tuple(lower.tolist()), tuple(float(s) for s in spacing), tuple(int(n) for n in size))

    @property
    def shape(self) -> tuple[int, int, int]:
        """numpy shape (nz, ny, nx)."""
        return self.size[::-1]

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.origin) + (np.asarray(self.size) - 1) * np.asarray(self.spacing)

    def axes(self, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable physical coordinates (Z[:,None,None], Y[None,:,None], X[None,None,:]) of a sub-box."""
        box = box or (slice(None),) * 3
        coords = []
        for axis_np, axis_itk in zip(range(3), (2, 1, 0)):
            n = self.size[axis_itk]
            idx = np.arange(n)[box[axis_np]]
            c = (self.origin[axis_itk] + idx * self.spacing[axis_itk]).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis_np] = len(c)
            coords.append(c.reshape(shape))
        return coords[0], coords[1], coords[2]

    def box(self, lower, upper) -> tuple[slice, slice, slice]:
        """Index slices (z, y, x) of the voxels whose centres lie in the physical box [lower, upper] (x, y, z)."""
        lo = np.floor((np.asarray(lower) - self.origin) / self.spacing).astype(int)
        hi = np.ceil((np.asarray(upper) - self.origin) / self.spacing).astype(int) + 1
        lo = np.clip(lo, 0, self.size)
        hi = np.clip(hi, 0, self.size)
        return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])

    def index_of(self, point) -> tuple[int, int, int]:
        """Nearest voxel (z, y, x) of a physical point, clipped to the grid."""
        i = np.rint((np.asarray(point) - self.origin) / self.spacing).astype(int)
        i = np.clip(i, 0, np.asarray(self.size) - 1)
        return int(i[2]), int(i[1]), int(i[0])

    def crop(self, box: tuple[slice, slice, slice]) -> "Grid":
        """The sub-grid of an index box (z, y, x slices with explicit bounds, as returned by `box`)."""
        start = np.array([box[2].start, box[1].start, box[0].start])
        stop = np.array([box[2].stop, box[1].stop, box[0].stop])
        origin = np.asarray(self.origin) + start * np.asarray(self.spacing)
        return Grid(tuple(origin.tolist()), self.spacing, tuple(int(n) for n in stop - start))

    def to_image(self, array: np.ndarray) -> sitk.Image:
        if array.shape[:3] != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid shape {self.shape}")
        image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        return image

    def reference_image(self, pixel_type=sitk.sitkFloat32) -> sitk.Image:
        """An empty image carrying this grid's geometry, as a resampling reference."""
        image = sitk.Image(list(self.size), pixel_type)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        return image


def smooth_noise(rng: np.random.Generator, grid: Grid, sigma_mm: float, components: int = 1) -> np.ndarray:
    """Gaussian random field on `grid` with correlation length ~sigma_mm and unit std per component.

    Drawn on a coarse lattice (sigma/2 spacing), smoothed and linearly resampled: cost independent of the
    fine grid's resolution.
    """
    coarse_spacing = max(sigma_mm / 2.0, min(grid.spacing))
    margin = 3 * sigma_mm
    coarse = Grid.covering(np.asarray(grid.origin) - margin, grid.upper + margin, (coarse_spacing,) * 3)
    out = []
    for _ in range(components):
        white = coarse.to_image(rng.standard_normal(coarse.shape).astype(np.float32))
        field = sitk.SmoothingRecursiveGaussian(white, sigma_mm)
        fine = sitk.GetArrayFromImage(sitk.Resample(field, grid.reference_image(), sitk.Transform(),
                                                    sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        std = float(fine.std()) or 1.0
        out.append((fine - fine.mean()) / std)
    return out[0] if components == 1 else np.stack(out, axis=-1)
