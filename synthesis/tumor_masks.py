"""Random tumor masks: irregular blobs inside the liver, sized in millimetres.

Diff4MMLiTS conditions its synthesizer on "randomly generated tumor masks"; the paper gives no recipe, so the
masks here are lobulated ellipsoids (an ellipsoid whose radius is modulated by a smooth random field), with
count and size distributions fitted to the training labels (`fit_mask_distribution`). Every size is in mm
and every placement uses the physical spacing, so the same settings hold at 0.8 mm and at 5 mm.
Written by hand: no imaging library generates lesion-shaped random masks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation


@dataclass
class TumorMaskDistribution:
    """How many tumors per case and how large (equivalent-sphere diameter, log-normal, clipped), in mm."""

    count_probabilities: list[float] = field(default_factory=lambda: [0.0, 0.45, 0.30, 0.15, 0.10])  # 0, 1, 2, ..
    log_diameter_mean: float = float(np.log(20.0))
    log_diameter_std: float = 0.6
    min_diameter_mm: float = 6.0
    max_diameter_mm: float = 70.0
    elongation: float = 0.2  # semi-axes vary by +-20 %
    lobulation: float = 0.12  # boundary modulation as a fraction of the radius

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TumorMaskDistribution":
        return cls(**data)

    def sample_count(self, rng: np.random.Generator, at_least_one: bool = True) -> int:
        p = np.asarray(self.count_probabilities, float)
        if at_least_one:
            p[0] = 0.0
        if p.sum() <= 0:
            return 1
        return int(rng.choice(len(p), p=p / p.sum()))

    def sample_diameter(self, rng: np.random.Generator) -> float:
        d = float(np.exp(rng.normal(self.log_diameter_mean, self.log_diameter_std)))
        return float(np.clip(d, self.min_diameter_mm, self.max_diameter_mm))


def lobulated_blob(Z, Y, X, center_mm, radii_mm, rotation: np.ndarray, rng: np.random.Generator,
                   lobulation: float, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius `rho` of a rotated ellipsoid on broadcastable physical axes, and the lobulated
    `boundary` (rho < boundary is inside). Also used by the phantom to draw its tumors."""
    dx, dy, dz = X - center_mm[0], Y - center_mm[1], Z - center_mm[2]
    q = 0.0
    for k in range(3):  # local axis k = column k of the rotation matrix
        u = rotation[0, k] * dx + rotation[1, k] * dy + rotation[2, k] * dz
        q = q + (u / radii_mm[k]) ** 2
    rho = np.sqrt(q)
    sigma_vox = [max(0.5, 0.35 * float(np.mean(radii_mm)) / s) for s in spacing_zyx]
    noise = ndimage.gaussian_filter(rng.standard_normal(np.shape(rho)).astype(np.float32), sigma_vox)
    noise /= noise.std() or 1.0
    return rho, 1.0 + lobulation * noise


def depth_mm(liver: np.ndarray, spacing_xyz) -> np.ndarray:
    """Distance (mm) of each liver voxel to the liver boundary; 0 outside."""
    image = sitk.GetImageFromArray(liver.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    return np.clip(sitk.GetArrayFromImage(dist), 0, None)


def random_tumor_mask(liver: np.ndarray, spacing_xyz, rng: np.random.Generator,
                      distribution: TumorMaskDistribution | None = None, count: int | None = None,
                      max_attempts: int = 8) -> tuple[np.ndarray, list[dict]]:
    """Draw tumors inside `liver` (bool, z-y-x, voxel size `spacing_xyz` mm); none crosses the liver boundary.

    Returns the uint8 mask (1 = tumor) and one dict per placed tumor (centre index, diameter). A tumor that
    does not fit is retried smaller; one that still does not fit is skipped (a small liver gets fewer tumors).
    """
    distribution = distribution or TumorMaskDistribution()
    spacing_xyz = np.asarray(spacing_xyz, float)
    spacing_zyx = spacing_xyz[::-1]
    n = distribution.sample_count(rng) if count is None else count
    depth = depth_mm(liver, spacing_xyz)
    mask = np.zeros(liver.shape, np.uint8)
    placed: list[dict] = []
    for _ in range(n):
        diameter = distribution.sample_diameter(rng)
        for _attempt in range(max_attempts):
            radius = diameter / 2
            # the lobulated boundary reaches (1 + 3 * lobulation) * the largest semi-axis at most
            reach = radius * (1 + distribution.elongation) * (1 + 3 * distribution.lobulation)
            candidates = np.argwhere((depth >= reach) & (mask == 0))
            if len(candidates):
                centre_idx = candidates[rng.integers(len(candidates))]
                far = all(np.linalg.norm((centre_idx - p["center_index"]) * spacing_zyx) > reach + p["reach_mm"]
                          for p in placed)
                if far:
                    break
            diameter = max(diameter * 0.75, distribution.min_diameter_mm * 0.5)
        else:
            continue
        radii = radius * rng.uniform(1 - distribution.elongation, 1 + distribution.elongation, 3)
        half = np.ceil(reach / spacing_zyx).astype(int) + 1
        lo = np.maximum(centre_idx - half, 0)
        hi = np.minimum(centre_idx + half + 1, liver.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        Z, Y, X = (((np.arange(a, b) - c) * s).reshape([-1 if k == i else 1 for k in range(3)])
                   for i, (a, b, c, s) in enumerate(zip(lo, hi, centre_idx, spacing_zyx)))
        rho, boundary = lobulated_blob(Z, Y, X, (0.0, 0.0, 0.0), radii, Rotation.random(random_state=rng).as_matrix(),
                                       rng, distribution.lobulation, spacing_zyx)
        blob = (rho < boundary) & liver[box]
        mask[box][blob] = 1
        placed.append({"center_index": centre_idx, "diameter_mm": float(diameter), "reach_mm": float(reach),
                       "voxels": int(blob.sum())})
    return mask, [{"center_index": [int(v) for v in p["center_index"]], "diameter_mm": p["diameter_mm"],
                   "voxels": p["voxels"]} for p in placed]


def equivalent_diameter_mm(volume_mm3):
    """Diameter of the sphere with this volume: the tumor size every distribution here is stated in."""
    return (6.0 * np.asarray(volume_mm3, float) / np.pi) ** (1.0 / 3.0)


def label_tumors(tumor_mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the tumors of a binary (Z, Y, X) mask on the case's own grid (26-connected components), the one
    definition of "a tumor" that the mask fit, training, sampling and the benchmark share."""
    return ndimage.label(np.asarray(tumor_mask, bool), structure=np.ones((3, 3, 3), bool))


def tumor_diameters_mm(components: np.ndarray, n: int, spacing_xyz) -> np.ndarray:
    """(n,) equivalent diameter of each of the n labelled tumors, from its physical volume."""
    return equivalent_diameter_mm(np.bincount(components.ravel(), minlength=n + 1)[1:] * float(np.prod(spacing_xyz)))


def fit_mask_distribution(labels: list[tuple[np.ndarray, tuple[float, float, float]]], tumor_value: int = 2
                          ) -> TumorMaskDistribution:
    """Fit count and size distributions to training labels [(label z-y-x, spacing x-y-z mm), ...].

    Tumors are connected components (26-connectivity) of `tumor_value`; size is the equivalent-sphere
    diameter from the component's physical volume. Falls back to the defaults where there is no tumor.
    """
    counts, diameters = [], []
    for label, spacing in labels:
        comps, n = label_tumors(label == tumor_value)
        counts.append(n)
        diameters += list(tumor_diameters_mm(comps, n, spacing))
    default = TumorMaskDistribution()
    if not diameters:
        return default
    hist = np.bincount(counts, minlength=2).astype(float) + 0.5  # add-half smoothing: unseen counts stay possible
    logs = np.log(diameters)
    return TumorMaskDistribution(
        count_probabilities=(hist / hist.sum()).round(4).tolist(),
        log_diameter_mean=float(logs.mean()),
        log_diameter_std=float(max(logs.std(), 0.2)),
        min_diameter_mm=float(max(min(diameters), 3.0)),
        max_diameter_mm=float(max(diameters)),
        elongation=default.elongation,
        lobulation=default.lobulation,
    )
