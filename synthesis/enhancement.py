"""Tumor enhancement patterns: measured on training tumors, drawn for new ones, rasterised as a UNet condition.

A tumor (tumor_masks.label_tumors) has an enhancement pattern: its mean change (tumor phase minus normal phase)
inside the tumor, per phase, in HU: e.g. about -10/+30/-15/-15 HU (NC/AP/PVP/DELAY) for a hypervascular tumor,
-10/-10/-35/-20 for a hypovascular one. Conditioned on the normal CT and the mask alone, the diffusion model has
to choose the pattern itself; trained on a few dozen tumors it painted blends of the two (62 % of the phantom
samples, vs 10 % of the real tumors, docs/decisions.md, Stage 3). Given the pattern as a condition, it only has
to render it, and the patterns of synthetic tumors follow those of the training tumors by construction.

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


def measure_patterns(changes_hu, components: np.ndarray, n: int) -> np.ndarray:
    """(n, C) mean change in HU inside each labelled tumor, per phase; `changes_hu` yields one (Z, Y, X)
    tumor-minus-normal array per phase (a (C, Z, Y, X) array or a generator, so a caller need not hold all
    phases' differences at once)."""
    index = np.arange(1, n + 1)
    return np.stack([np.asarray(ndimage.mean(c, components, index), np.float32) for c in changes_hu], axis=1)


def resampled_condition(components: np.ndarray, patterns_hu: np.ndarray, start, step, shape) -> np.ndarray:
    """The UNet's tumor condition (1 + C, *shape) on the grid index = start + i * step of the case grid: each
    labelled tumor is resampled alone (roi.resample_grid) and adds its fraction to channel 0 and fraction x
    its pattern / ENHANCEMENT_UNIT_HU to the others. Resampling is linear, so channel 0 equals resampling the
    whole mask, and close tumors that the resampled fraction would join keep their own patterns. Written by
    hand: no library rasterises per-lesion attributes."""
    from .roi import resample_grid

    patterns = np.asarray(patterns_hu, np.float32) / ENHANCEMENT_UNIT_HU  # (n tumors, C), n may be 0
    start, step = np.asarray(start, float), np.asarray(step, float)
    pad = np.ceil(2 * step).astype(int) + 2  # covers resample_grid's anti-aliasing reach
    out = np.zeros((1 + patterns.shape[1], *shape), np.float32)
    for k, obj in enumerate(ndimage.find_objects(components), start=1):
        if obj is None:
            continue
        lo = np.maximum(np.array([s.start for s in obj]) - pad, 0)
        hi = np.minimum(np.array([s.stop for s in obj]) + pad, components.shape)
        alone = (components[tuple(slice(a, b) for a, b in zip(lo, hi))] == k).astype(np.float32)
        fraction = resample_grid(alone, start - lo, step, shape, cval=0.0)
        if fraction.any():
            out[0] += fraction
            out[1:] += fraction[None] * patterns[k - 1][:, None, None, None]
    return out


@dataclass
class EnhancementBank:
    """Every training tumor's pattern (HU per phase) and equivalent diameter (mm)."""

    patterns_hu: list[list[float]]
    diameters_mm: list[float]

    def __post_init__(self):
        if not self.patterns_hu or len(self.patterns_hu) != len(self.diameters_mm):
            raise ValueError("an enhancement bank needs one pattern per diameter, and at least one tumor")
        if len({len(p) for p in self.patterns_hu}) != 1:
            raise ValueError("every pattern of an enhancement bank needs one value per phase")
        if not (np.isfinite(np.asarray(self.patterns_hu, float)).all()
                and (np.asarray(self.diameters_mm, float) > 0).all()):
            raise ValueError("an enhancement bank needs finite patterns and positive diameters")

    @property
    def channels(self) -> int:
        return len(self.patterns_hu[0])

    def to_json(self) -> dict:  # rounded to 0.01 HU / 0.01 mm, far below what the patterns vary by
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
    """resampled_condition on the ROI `spec` around `centre_zyx` (the grid roi.extract_roi samples)."""
    from .roi import roi_start_step

    start, step = roi_start_step(centre_zyx, spacing_xyz, spec)
    return resampled_condition(components, patterns_hu, start, step, (spec.size_vox,) * 3)
