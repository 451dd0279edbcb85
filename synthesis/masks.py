"""Masks for the normal-CT generator: random healthy-liver holes (dilation in mm and the body mask are
registration.masks', shared by every stage).

Everything is defined in physical units (mm) so that a 0.8 mm clinical scan and a 5 mm phantom scan get the same
margins and hole sizes. Spacing arguments follow ITK's (x, y, z) order, as ``image.GetSpacing()`` returns them;
arrays follow SimpleITK's numpy order (z, y, x).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

# Blob outline: an ellipsoid whose radius is modulated by smooth noise of this relative amplitude, so that holes
# are lobulated like tumors rather than perfect ellipsoids.
BLOB_BOUNDARY_NOISE = 0.25
BLOB_ASPECT_RANGE = (0.7, 1.3)  # per-axis radius factor


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
