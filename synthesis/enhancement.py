"""Tumor enhancement patterns: measured on training tumors, drawn for new ones, rasterised as a UNet condition.

A tumor's enhancement pattern is its mean change (tumor phase minus normal phase) inside the tumor, per phase,
in HU: e.g. about -10/+30/-15/-15 HU (NC/AP/PVP/DELAY) for a hypervascular tumor, -10/-10/-35/-20 for a
hypovascular one. Conditioned on the normal CT and the mask alone, the diffusion model has to choose the
pattern itself; trained on a few dozen tumors it painted blends of the two (62 % of the phantom samples, vs 10 %
of the real tumors, docs/decisions.md, Stage 3). Given the pattern as a condition, it only has to render it,
and the patterns of synthetic tumors follow those of the training tumors by construction.

The `EnhancementBank` (stored in the bundle JSON) holds every training tumor's pattern and size; a new tumor
draws the pattern of a training tumor of similar size (small tumors show less contrast: partial volume).
The condition given to the UNet is (1 + C) channels: the tumor fraction, then the fraction times the tumor's
pattern / `ENHANCEMENT_UNIT_HU` per phase.
Written by hand: no library measures or draws per-lesion enhancement patterns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

ENHANCEMENT_UNIT_HU = 50.0  # condition channels = change / 50 HU, so typical patterns are O(1)
_CONNECTIVITY = np.ones((3, 3, 3), bool)


def tumor_components(tumor_fraction: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the connected tumor components of a (Z, Y, X) fraction map (any voxel above 0 belongs to one)."""
    return ndimage.label(np.asarray(tumor_fraction) > 0, structure=_CONNECTIVITY)


def measure_patterns(change_hu: np.ndarray, tumor_fraction: np.ndarray, components: np.ndarray, n: int,
                     ) -> np.ndarray:
    """(n, C) mean change in HU of each component's core (fraction >= 0.5, else its voxels of largest
    fraction) per phase; `change_hu` is (C, Z, Y, X) tumor minus normal in HU."""
    out = np.zeros((n, change_hu.shape[0]), np.float32)
    for k, obj in enumerate(ndimage.find_objects(components), start=1):
        if obj is None:
            continue
        frac = np.where(components[obj] == k, tumor_fraction[obj], 0.0)
        core = frac >= min(0.5, float(frac.max()))
        out[k - 1] = change_hu[(slice(None), *obj)][:, core].mean(axis=1)
    return out


def condition_map(tumor_fraction: np.ndarray, components: np.ndarray, patterns_hu: np.ndarray) -> np.ndarray:
    """(1 + C, Z, Y, X) float32: the tumor fraction, then fraction x the pattern of its component / unit."""
    patterns = np.asarray(patterns_hu, np.float32).reshape(-1, np.shape(patterns_hu)[-1]) / ENHANCEMENT_UNIT_HU
    lookup = np.concatenate([np.zeros((1, patterns.shape[1]), np.float32), patterns])  # component 0 = none
    per_voxel = np.moveaxis(lookup[components], -1, 0)
    frac = np.asarray(tumor_fraction, np.float32)
    return np.concatenate([frac[None], per_voxel * frac[None]]).astype(np.float32)


@dataclass
class EnhancementBank:
    """Every training tumor's pattern (HU per phase) and equivalent diameter (mm)."""

    patterns_hu: list[list[float]]
    diameters_mm: list[float]

    def __post_init__(self):
        if not self.patterns_hu or len(self.patterns_hu) != len(self.diameters_mm):
            raise ValueError("an enhancement bank needs one pattern per diameter, and at least one tumor")

    @property
    def channels(self) -> int:
        return len(self.patterns_hu[0])

    def to_json(self) -> dict:
        return {"patterns_hu": [[round(float(v), 2) for v in p] for p in self.patterns_hu],
                "diameters_mm": [round(float(d), 2) for d in self.diameters_mm]}

    @classmethod
    def from_json(cls, data: dict) -> "EnhancementBank":
        return cls([list(map(float, p)) for p in data["patterns_hu"]], [float(d) for d in data["diameters_mm"]])

    def neighbours(self) -> int:
        """Draw among this many training tumors nearest in size: ~1/8 of the bank, at least 3."""
        return min(len(self.diameters_mm), max(3, len(self.diameters_mm) // 8))

    def draw(self, diameter_mm: float, rng: np.random.Generator) -> np.ndarray:
        """The pattern (C,) of a training tumor drawn uniformly among those nearest in log-diameter."""
        gap = np.abs(np.log(np.asarray(self.diameters_mm)) - np.log(max(float(diameter_mm), 1e-3)))
        nearest = np.argsort(gap, kind="stable")[: self.neighbours()]
        return np.asarray(self.patterns_hu[int(rng.choice(nearest))], np.float32)


def roi_condition(components: np.ndarray, patterns_hu: np.ndarray, spacing_xyz, centre_zyx, spec) -> np.ndarray:
    """The (1 + C, n, n, n) condition of the ROI `spec` around `centre_zyx` of a case whose tumors are the
    labelled `components` (Z, Y, X) with patterns `patterns_hu` (n components, C): each component touching the
    ROI is resampled alone (resampling is linear, so the channel sums equal resampling the whole maps), which
    avoids building (1 + C) full-size maps or resampling a label image."""
    from .roi import extract_roi, roi_start_step

    patterns = np.asarray(patterns_hu, np.float32) / ENHANCEMENT_UNIT_HU
    start, step = roi_start_step(centre_zyx, spacing_xyz, spec)
    end = start + (spec.size_vox - 1) * step
    pad = np.ceil(2 * step).astype(int) + 2  # covers resample_grid's anti-aliasing reach
    lo = np.clip(np.floor(start).astype(int) - pad, 0, components.shape)
    hi = np.clip(np.ceil(end).astype(int) + pad + 1, 0, components.shape)
    labels = components[tuple(slice(a, b) for a, b in zip(lo, hi))]
    out = np.zeros((1 + patterns.shape[1],) + (spec.size_vox,) * 3, np.float32)
    for k in np.unique(labels[labels > 0]):
        fraction = extract_roi((labels == k).astype(np.float32), spacing_xyz, np.asarray(centre_zyx) - lo, spec)
        out[0] += fraction
        out[1:] += fraction[None] * patterns[k - 1][:, None, None, None]
    return out
