"""Binary masks in physical units, one definition for every stage: dilation by a radius in mm and the body mask.

Registration (its mask margins), the inpainter (the dilated tumor it replaces, kept inside the body), the
evaluation (the dilated liver the registration error is measured in) and the post-processing (tumors near the
liver) all call these; synthesis/ and the plugin import them from here (registration/ imports neither).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# The distance map is float32: a voxel exactly at the radius (15 voxels of 0.8 mm from a 12 mm margin) can come
# out a few 1e-6 mm beyond it; this tolerance keeps it, as the radius means.
DISTANCE_TOLERANCE_MM = 1e-4


def _binary(mask: sitk.Image) -> sitk.Image:
    return sitk.Cast(mask != 0, sitk.sitkUInt8)


def dilate_mm(mask: sitk.Image, radius_mm: float, within: sitk.Image | None = None) -> sitk.Image:
    """Voxels whose centre lies within ``radius_mm`` (Euclidean, in mm) of a non-zero voxel of ``mask``: a signed
    Maurer distance map in physical units, thresholded, so anisotropic spacing is exact (a structuring element in
    voxels is not). ``radius_mm = 0`` returns the mask itself. With ``within`` (same grid) the result is limited
    to its non-zero voxels (e.g. the body, so that a margin never spills into the air). UInt8 0/1 on the mask's
    grid."""
    if radius_mm < 0:
        raise ValueError(f"radius_mm must be >= 0, not {radius_mm}")
    binary = _binary(mask)
    if radius_mm == 0 or not sitk.GetArrayViewFromImage(binary).any():
        out = binary
    else:
        # insideIsPositive=False: <= 0 inside; outside, the distance in mm from a voxel centre to the nearest
        # object voxel centre (a single voxel on a 1.5 x 1 x 3 mm grid gives 1.5, 3, ... along x)
        distance = sitk.SignedMaurerDistanceMap(binary, insideIsPositive=False, squaredDistance=False,
                                                useImageSpacing=True, backgroundValue=0)
        out = sitk.Cast(distance <= radius_mm + DISTANCE_TOLERANCE_MM, sitk.sitkUInt8)
    if within is not None:
        out = sitk.And(out, _binary(within))
    return out


def body_mask(image: sitk.Image, threshold_hu: float = -500.0) -> sitk.Image:
    """The patient: voxels above ``threshold_hu``, largest connected component, holes (lungs, bowel gas) filled
    in each axial slice (in 3D they open to the border through the airways; within a slice they do not). UInt8
    0/1 on ``image``'s grid."""
    from scipy import ndimage

    above = sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) > float(threshold_hu), sitk.sitkUInt8)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(above), sortByObjectSize=True)
    largest = sitk.GetArrayFromImage(components) == 1
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(largest, structure=in_plane)
    out = sitk.GetImageFromArray(filled.astype(np.uint8))
    out.CopyInformation(image)
    return out
