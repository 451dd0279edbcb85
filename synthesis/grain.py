"""Native-resolution grain for a filled region: the scan's own noise texture, measured on its healthy liver.

A fill made on a coarse working grid (the learned inpainter's 3 x 3 x 5 mm) or by a smooth classical method
(harmonic, median) lacks the fine grain of the scan it is pasted into: on a 0.8 mm clinical scan the hole reads
as a flat patch, which teaches the synthesizer "tumor = grain" (issue #21). The grain of a CT is set by the
scanner's reconstruction kernel, dose and voxel size, so it is measured per scan and per phase, on the native
grid, and restored there:

1. **Band**: the high-pass residual ``image - gaussian(image, sigma)`` with ``sigma = GRAIN_SIGMA_VOXELS``
   native voxels per axis: the band where a coarse or smooth fill loses energy, whatever the voxel size. The
   Gaussian is a normalised convolution within the tissue measured (healthy liver; the fill's liver part), so
   a tissue edge or the hole's rim is not taken for grain.
2. **Texture model**: the residual's power spectrum (noise power spectrum, NPS), averaged over cubes of
   ``CUBE_MM`` (halved until one fits) that lie entirely in the healthy liver, each Hann-windowed (Welch's
   method). A stationary Gaussian field with that spectrum (white noise convolved with the zero-phase kernel
   ``ifft(sqrt(NPS))``) has the scan's grain amplitude, correlation and anisotropy (CT noise is neither white nor isotropic).
3. **Amount**: a smooth classical fill is topped up until its residual energy reaches the healthy liver's,
   ``std_add = sqrt(max(std_healthy^2 - std_fill^2, 0))`` (in the band of step 1). A fill made on a coarser
   working grid (the learned inpainter) already has the grain that grid holds; it gets what that grid loses
   (``lost_detail``: the healthy liver minus its down- and up-sampling through the working grid, with that
   detail's own spectrum), but no more than the top-up above allows: nothing on a native grid as coarse as the
   working grid (where the fill's own grain, measured in small holes, reads low and a top-up alone
   over-fills), and on a fine grid not more than the fill lacks. The added field is zero-mean and
   high-frequency: the fill's structure is kept.

Written here because no library offers it: SimpleITK and scikit-image have noise *adders* (Gaussian, shot,
speckle: white, amplitude given) but no texture synthesis from a measured NPS.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

GRAIN_SIGMA_VOXELS = 1.5  # the high-pass band (native voxels): the grain, not the anatomy
CUBE_MM = 16.0  # side of the NPS cubes: several correlation lengths of CT noise (<= ~2 mm), inside a liver lobe
MAX_CUBES = 48
MIN_CUBE_VOXELS = 4  # per axis; a liver too thin for that gets white noise of the measured amplitude


def highpass(array: np.ndarray, sigma_voxels: float = GRAIN_SIGMA_VOXELS, mask: np.ndarray | None = None
             ) -> np.ndarray:
    """``array - gaussian(array)``; with ``mask``, the Gaussian is a normalised convolution over the mask's
    voxels only (zero outside it), so a tissue edge or the rim of a hole does not count as grain."""
    a = np.asarray(array, np.float32)
    if mask is None:
        return a - ndimage.gaussian_filter(a, sigma_voxels, mode="nearest")
    m = mask.astype(np.float32)
    low = ndimage.gaussian_filter(a * m, sigma_voxels, mode="constant")
    low /= np.maximum(ndimage.gaussian_filter(m, sigma_voxels, mode="constant"), 1e-3)
    return np.where(mask, a - low, 0.0).astype(np.float32)


def _inner(mask: np.ndarray) -> np.ndarray:
    """The mask eroded by one voxel (normalised convolution is weakest on its last voxel), or itself."""
    inner = ndimage.binary_erosion(mask)
    return inner if inner.sum() >= 20 else mask


def _cube_shape(spacing_zyx) -> tuple[int, ...]:
    return tuple(int(max(MIN_CUBE_VOXELS, min(32, round(CUBE_MM / float(s))))) for s in spacing_zyx)


def lost_detail(reference: np.ndarray, spacing_zyx, working_spacing_zyx) -> np.ndarray:
    """What a grid of ``working_spacing_zyx`` mm cannot hold of ``reference`` (on ``spacing_zyx``): the image
    minus its linear down- and up-sampling through that grid (zero where the native grid is as coarse).
    scipy's zoom on the array, not SimpleITK: the grain is a property of the voxel lattice, not of the
    scanner-space geometry, and this keeps the module array-only."""
    a = np.asarray(reference, np.float32)
    factors = [min(float(s) / float(w), 1.0) for s, w in zip(spacing_zyx, working_spacing_zyx)]
    if all(f >= 0.999 for f in factors):
        return np.zeros_like(a)
    coarse = ndimage.zoom(a, factors, order=1, mode="nearest", grid_mode=True)
    back = ndimage.zoom(coarse, [n / m for n, m in zip(a.shape, coarse.shape)], order=1, mode="nearest",
                        grid_mode=True)
    return a - back[tuple(slice(0, n) for n in a.shape)]


def grain_spectrum(detail: np.ndarray, healthy: np.ndarray, spacing_zyx, rng: np.random.Generator
                   ) -> tuple[np.ndarray | None, float]:
    """(NPS over a cube, std in the healthy liver) of a detail image of one phase (its high-pass residual, or
    its :func:`lost_detail`). The NPS is None when no cube of at least MIN_CUBE_VOXELS per axis fits in the
    healthy liver (white noise is used instead)."""
    residual = np.asarray(detail, np.float32)
    core = _inner(healthy)
    std = float(residual[core].std()) if core.sum() >= 20 else 0.0
    full = np.asarray(_cube_shape(spacing_zyx))
    for level in range(8):  # halve the cube (never below MIN_CUBE_VOXELS per axis) until one fits
        shape = np.maximum(full // 2 ** level, MIN_CUBE_VOXELS)
        if level and np.array_equal(shape, np.maximum(full // 2 ** (level - 1), MIN_CUBE_VOXELS)):
            break  # every axis is at its minimum already
        fits = ndimage.minimum_filter(core, size=tuple(int(s) for s in shape), mode="constant", cval=0)
        centres = np.argwhere(fits)
        if len(centres):
            chosen = centres[rng.choice(len(centres), size=min(MAX_CUBES, len(centres)), replace=False)]
            window = np.ones(tuple(shape), np.float32)
            for axis, n in enumerate(shape):
                w = np.hanning(int(n) + 2)[1:-1].astype(np.float32)  # no zero end points
                window *= w.reshape([-1 if a == axis else 1 for a in range(3)])
            window /= np.sqrt((window ** 2).mean())  # the windowed cube keeps its power
            power = np.zeros(tuple(shape), np.float64)
            for centre in chosen:
                lo = centre - shape // 2
                cube = residual[tuple(slice(int(a), int(a + n)) for a, n in zip(lo, shape))]
                power += np.abs(np.fft.fftn((cube - cube.mean()) * window)) ** 2
            return power / len(chosen), std
    return None, std


def grain_field(shape: tuple[int, ...], spectrum: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean stationary Gaussian field of ``shape`` with power spectrum ``spectrum`` (white if None),
    of unit std."""
    white = rng.standard_normal(shape).astype(np.float32)
    if spectrum is None:
        return white
    kernel = np.fft.fftshift(np.real(np.fft.ifftn(np.sqrt(spectrum)))).astype(np.float32)  # zero phase
    field = signal.fftconvolve(white, kernel, mode="same").astype(np.float32)
    return field / (float(field.std()) or 1.0)


def restore_grain(filled: np.ndarray, reference: np.ndarray, region: np.ndarray, healthy: np.ndarray, spacing_zyx,
                  rng: np.random.Generator, tissue: np.ndarray | None = None, working_spacing_zyx=None
                  ) -> tuple[np.ndarray, dict]:
    """``filled`` (one phase, Z Y X, the region already filled) plus native grain inside ``region``.

    ``reference`` is the phase before filling; its healthy liver (``healthy``, outside the region) gives the
    grain. Two cases:

    - ``working_spacing_zyx`` given (a fill made on that coarser grid, e.g. the learned inpainter's, which has
      the grain that grid holds): what that grid loses, :func:`lost_detail` of the healthy liver with its
      spectrum, at most as much as the top-up below allows. On a native grid as coarse as the working grid
      nothing is added.
    - otherwise (a smooth fill): the fill's own high-pass energy is measured on ``region & tissue`` (default the
      whole region; pass the liver so that the fill's liver/fat edge does not count) and topped up to the
      healthy liver's, with the healthy liver's spectrum.

    Returns (the new array, a record: the healthy and fill std in HU, the std added, whether an NPS or white
    noise was used)."""
    out = np.asarray(filled, np.float32).copy()
    record = {"healthy_std": 0.0, "fill_std": 0.0, "added_std": 0.0, "texture": "none"}
    if not region.any() or healthy.sum() < 20:
        return out, record
    lo, hi = np.argwhere(region).min(0), np.argwhere(region).max(0) + 1
    pad = int(np.ceil(3 * GRAIN_SIGMA_VOXELS)) + 1
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub_region = region[box]
    if working_spacing_zyx is not None:
        detail = lost_detail(reference, spacing_zyx, working_spacing_zyx)
        if not detail.any():  # the native grid is as coarse as the working grid: the fill has its grain
            return out, record
    residual = highpass(reference, mask=healthy)
    if working_spacing_zyx is not None:
        spectrum, lost = grain_spectrum(detail, healthy, spacing_zyx, rng)
        healthy_std = float(residual[_inner(healthy)].std())
    else:
        spectrum, healthy_std = grain_spectrum(residual, healthy, spacing_zyx, rng)
    measured = sub_region if tissue is None else sub_region & tissue[box]
    measured = measured if measured.sum() >= 20 else sub_region
    band = _inner(measured)
    fill_std = float(highpass(out[box], mask=measured)[band].std())
    missing = float(np.sqrt(max(healthy_std ** 2 - fill_std ** 2, 0.0)))
    # a learned fill gets the working grid's loss, but never more than it lacks against the healthy liver in the
    # band: the network's fill keeps part of the fine grain, and on the 0.8 mm phantom the loss alone over-filled
    # (texture 1.42-1.57, docs/decisions.md)
    added = missing if working_spacing_zyx is None else min(missing, lost)
    record.update(healthy_std=healthy_std, fill_std=fill_std, added_std=added)
    record["texture"] = "nps" if spectrum is not None else "white"
    if added > 0:
        field = grain_field(tuple(int(b - a) for a, b in zip(lo, hi)), spectrum, rng)
        field *= added / (float(highpass(field)[band].std()) or 1.0)  # its energy in the band is what is added
        sub = out[box]
        sub[sub_region] += field[sub_region]
    return out, record
