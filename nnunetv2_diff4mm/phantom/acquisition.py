"""Scanning the anatomy: per-phase HU maps, slice geometry, point-spread blur, resampling and CT noise."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .anatomy import Anatomy
from .grid import Grid
from .tissues import (CAPSULE_OFFSET_HU, NECROSIS_HU, PHASES, TUMOR_BASE, TUMOR_BODY, TUMOR_CAPSULE,
                      TUMOR_NECROSIS, TUMOR_TEXTURE_HU, Tissue, phase_lookup_tables)

HU_MIN, HU_MAX = -1024, 3071
PSF_SIGMA_FRACTION = 0.45  # Gaussian PSF sigma as a fraction of the voxel size, per axis


def hu_atlases(anatomy: Anatomy, uptake: dict[str, float]) -> dict[str, np.ndarray]:
    """Noise-free HU of the anatomy in each phase (on the anatomy grid)."""
    tables = phase_lookup_tables(uptake)
    out = {}
    for phase in PHASES:
        mean, tex = (t.copy() for t in tables[phase])
        liver_hu = mean[Tissue.LIVER]
        for tumor in anatomy.tumors:
            base = TUMOR_BASE + 3 * tumor.index
            mean[base + TUMOR_BODY] = liver_hu + tumor.hu_offset[phase]
            mean[base + TUMOR_NECROSIS] = NECROSIS_HU
            mean[base + TUMOR_CAPSULE] = liver_hu + CAPSULE_OFFSET_HU[phase]
            strong = tumor.kind == "hypervascular" and phase == "AP"  # mosaic arterial enhancement
            tex[base:base + 3] = TUMOR_TEXTURE_HU * (1.6 if strong else 1.0)
        out[phase] = mean[anatomy.tissue] + tex[anatomy.tissue] * anatomy.texture
    return out


def psf_blur(image: sitk.Image, target_spacing) -> sitk.Image:
    """Blur with the scanner's point-spread function for the target voxel size (also anti-aliases)."""
    sigma = [PSF_SIGMA_FRACTION * s for s in target_spacing]
    return sitk.SmoothingRecursiveGaussian(image, sigma)


def scan_noise_free(anatomy: Anatomy, hu: np.ndarray, grid: Grid, transform: sitk.Transform) -> sitk.Image:
    """`hu` (anatomy grid) as the scanner `grid` sees it before CT noise: PSF blur and resampling (float HU).

    Ground truth for benchmarks that must separate structure from noise (what a perfect inpainter could know).
    """
    blurred = psf_blur(anatomy.grid.to_image(hu.astype(np.float32)), grid.spacing)
    return sitk.Resample(blurred, grid.reference_image(), transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)


def ct_noise(shape, noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Spatially correlated CT noise (white noise smoothed over ~0.6 voxel) with std ``noise_hu``, float32."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.6)
    return noise * (noise_hu / (noise.std() or 1.0))


def add_ct_noise(noise_free: sitk.Image, grid: Grid, noise_hu: float, rng: np.random.Generator) -> sitk.Image:
    """The acquired int16 image: ``scan_noise_free``'s output plus ``ct_noise`` of std ``noise_hu``, rounded and
    clipped to the HU range."""
    array = sitk.GetArrayFromImage(noise_free)
    array += ct_noise(array.shape, noise_hu, rng)
    out = grid.to_image(np.clip(np.rint(array), HU_MIN, HU_MAX).astype(np.int16))
    return out


def label_map(anatomy: Anatomy, grid: Grid, transform: sitk.Transform) -> sitk.Image:
    """nnU-Net label (0 background, 1 liver, 2 tumor) on `grid`: a voxel belongs to a structure if the
    PSF-blurred structure covers at least half of it (partial-volume consistent with the image)."""
    out = np.zeros(grid.shape, np.uint8)
    idx = np.argwhere(anatomy.liver)
    if len(idx) == 0:
        return grid.to_image(out)
    margin = 4 * np.ceil(np.asarray(grid.spacing[::-1]) / anatomy.grid.spacing[::-1]).astype(int)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, anatomy.grid.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = anatomy.grid.crop(box)  # blur only around the liver: labels live there
    for value, mask in ((1, anatomy.liver[box]), (2, anatomy.tumor_mask[box])):
        frac = psf_blur(sub.to_image(mask.astype(np.float32)), grid.spacing)
        frac = sitk.GetArrayFromImage(sitk.Resample(frac, grid.reference_image(), transform, sitk.sitkLinear,
                                                    0.0, sitk.sitkFloat32))
        out[frac >= 0.5] = value
    return grid.to_image(out)
