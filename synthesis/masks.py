"""Masks for the normal-CT generator: dilation in millimetres, the body, and random healthy-liver holes.

Everything is defined in physical units (mm) so that a 0.8 mm clinical scan and a 5 mm phantom scan get the same
margins and hole sizes. Spacing arguments follow ITK's (x, y, z) order, as ``image.GetSpacing()`` returns them;
arrays follow SimpleITK's numpy order (z, y, x).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

# Blob outline: an ellipsoid whose radius is modulated by smooth noise of this relative amplitude, so that holes
# are lobulated like tumors rather than perfect ellipsoids.
BLOB_BOUNDARY_NOISE = 0.25
BLOB_ASPECT_RANGE = (0.7, 1.3)  # per-axis radius factor


def _binary(mask: sitk.Image) -> sitk.Image:
    return sitk.Cast(mask != 0, sitk.sitkUInt8)


def dilate_mask_mm(mask: sitk.Image, radius_mm: float, within: sitk.Image | None = None) -> sitk.Image:
    """Voxels whose centre lies within ``radius_mm`` (Euclidean, in mm) of a non-zero voxel of ``mask``.

    Exact for anisotropic spacing (a signed Maurer distance map in physical units, thresholded), unlike a
    structuring element in voxels. ``radius_mm = 0`` returns the mask itself. With ``within`` (same grid), the
    result is restricted to its non-zero voxels (e.g. the body, so that a margin never spills into the air).
    Returns a uint8 0/1 image on the mask's grid.
    """
    if radius_mm < 0:
        raise ValueError(f"radius_mm must be >= 0, not {radius_mm}")
    binary = _binary(mask)
    arr = sitk.GetArrayViewFromImage(binary)
    if radius_mm == 0 or not arr.any():
        out = binary
    else:
        # insideIsPositive=False: <= 0 inside; outside, the distance in mm from a voxel centre to the nearest
        # object voxel centre (measured: a single voxel on a 1.5 x 1 x 3 mm grid gives 1.5, 3, ... along x).
        distance = sitk.SignedMaurerDistanceMap(binary, insideIsPositive=False, squaredDistance=False,
                                                useImageSpacing=True)
        out = sitk.Cast(distance <= radius_mm + 1e-4, sitk.sitkUInt8)  # float tolerance
    if within is not None:
        out = sitk.And(out, _binary(within))
    return out


def body_mask(ct: sitk.Image, threshold_hu: float = -500.0) -> sitk.Image:
    """The patient's body: voxels above ``threshold_hu``, largest connected component, holes filled.

    Holes are filled slice by slice (axial) and in 3D, so that lung bases and bowel gas, which open to the
    image border in 3D through the airways but not within a slice, count as inside. Returns uint8 0/1.
    """
    foreground = sitk.Cast(sitk.Cast(ct, sitk.sitkFloat32) > float(threshold_hu), sitk.sitkUInt8)
    components = sitk.ConnectedComponent(foreground)
    largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
    filled = sitk.BinaryFillhole(sitk.Cast(largest, sitk.sitkUInt8))
    arr = sitk.GetArrayFromImage(filled).astype(bool)
    for z in range(arr.shape[0]):  # per axial slice: gas pockets reach the border only through other slices
        if arr[z].any():
            arr[z] = ndimage.binary_fill_holes(arr[z])
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(ct)
    return out


def _distance_inside(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    return ndimage.distance_transform_edt(mask, sampling=spacing_zyx)


def random_liver_blob_masks(liver: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, count: int,
                            radius_mm_range: tuple[float, float] = (5.0, 25.0)) -> np.ndarray:
    """``count`` irregular blobs inside ``liver``, as a label array (0 outside, k = 1..count for blob k).

    ``liver`` is a boolean (z, y, x) array of the region the blobs must stay in (typically the healthy liver:
    liver minus the dilated tumors); ``spacing`` is (x, y, z) in mm. Each blob is a randomly rotated ellipsoid
    with a nominal radius drawn log-uniformly from ``radius_mm_range`` (per-axis factor 0.7-1.3), its outline
    perturbed by smooth noise (lobulated, like tumors and like LaMa's large irregular masks), intersected with
    ``liver`` and reduced to the piece connected to its centre. Centres are liver voxels at least half a radius
    from the liver's edge where possible, so blobs are mostly surrounded by liver. Later blobs may overwrite
    earlier ones where they overlap; a blob that ends up empty is dropped, so fewer than ``count`` labels can
    occur (never for a non-empty liver, which always gets at least one).
    """
    liver = np.asarray(liver, bool)
    out = np.zeros(liver.shape, np.int32)
    if count <= 0 or not liver.any():
        return out
    spacing_zyx = np.asarray(spacing, float)[::-1]
    depth = _distance_inside(liver, spacing_zyx)
    lo, hi = np.log(radius_mm_range[0]), np.log(radius_mm_range[1])
    for k in range(1, count + 1):
        radius = float(np.exp(rng.uniform(lo, hi)))
        candidates = np.flatnonzero(depth >= 0.5 * radius)
        if candidates.size == 0:
            candidates = np.flatnonzero(depth >= depth.max() * 0.5)
        centre = np.asarray(np.unravel_index(candidates[rng.integers(candidates.size)], liver.shape))
        radii = radius * rng.uniform(*BLOB_ASPECT_RANGE, size=3)  # along the blob's own axes, mm
        rotation = Rotation.random(random_state=rng).as_matrix()
        reach = radii.max() * (1 + 2 * BLOB_BOUNDARY_NOISE)
        half = np.ceil(reach / spacing_zyx).astype(int)
        lo_idx = np.maximum(centre - half, 0)
        hi_idx = np.minimum(centre + half + 1, liver.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo_idx, hi_idx))
        offsets = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo_idx, hi_idx, centre, spacing_zyx)]
        dz, dy, dx = np.meshgrid(*offsets, indexing="ij")
        points = np.stack([dx, dy, dz], axis=-1) @ rotation  # coordinates along the blob's axes (x, y, z)
        rho = np.sqrt(((points / radii) ** 2).sum(axis=-1))
        sigma = np.maximum(0.5, 0.4 * radius / spacing_zyx)  # outline wobble correlated over ~0.4 radius
        wobble = ndimage.gaussian_filter(rng.standard_normal(rho.shape), sigma, mode="wrap")
        wobble /= wobble.std() or 1.0
        blob = (rho < 1.0 + BLOB_BOUNDARY_NOISE * wobble) & liver[box]
        local_centre = tuple(int(c - a) for c, a in zip(centre, lo_idx))
        blob[local_centre] = True
        pieces, _ = ndimage.label(blob)
        blob = pieces == pieces[local_centre]
        out[box][blob] = k
    return out
