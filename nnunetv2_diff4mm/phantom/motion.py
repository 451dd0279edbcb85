"""Breathing-like misalignment of one contrast phase relative to the reference phase.

The upper-abdominal organs move together (cranio-caudal shift of a few mm up to ~15 mm, small rotation about
the liver, smooth non-rigid wobble) while the spine and back muscles barely move; the patient may also shift
slightly on the table. Represented as a SimpleITK displacement-field transform from scanner space to the
anatomical frame, plus its numerical inverse for the ground truth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from .anatomy import BodyShape
from .config import MAX_CRANIOCAUDAL_SHIFT_MM
from .grid import Grid, smooth_noise

FIELD_SPACING_MM = 6.0  # composition error of field and inverse: mean 0.05 mm, max 0.4 mm


@dataclass
class PhaseMotion:
    """Parameters of one phase's motion (mm and degrees), kept in the ground truth."""

    table_shift_mm: tuple[float, float, float]
    organ_shift_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    rotation_center_mm: tuple[float, float, float]
    deformation_std_mm: float

    def to_json(self) -> dict:
        return asdict(self)


def identity_motion(center) -> PhaseMotion:
    return PhaseMotion((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), tuple(map(float, center)), 0.0)


def sample_motion(rng: np.random.Generator, liver_center, max_shift_mm: float = MAX_CRANIOCAUDAL_SHIFT_MM
                  ) -> PhaseMotion:
    cc = float(rng.choice([-1, 1]) * rng.uniform(min(3.0, max_shift_mm), max_shift_mm))
    return PhaseMotion(
        table_shift_mm=tuple(float(v) for v in rng.uniform(-2, 2, 3)),
        organ_shift_mm=(float(rng.uniform(-3, 3)), float(rng.uniform(-4, 4)), cc),
        rotation_deg=tuple(float(v) for v in rng.uniform(-3, 3, 3)),
        rotation_center_mm=tuple(float(v) for v in liver_center),
        deformation_std_mm=float(rng.uniform(1.0, 2.5)),
    )


def mobile_weight(body: BodyShape, grid: Grid) -> np.ndarray:
    """1 in the abdominal cavity in front of the spine, falling smoothly to 0 at the back and outside."""
    Z, Y, X = grid.axes()
    cavity = np.broadcast_to(body.interior(X, Y), grid.shape).astype(np.float32)
    posterior_limit = body.half_depth - body.fat_mm - 55  # roughly the front of the vertebral bodies
    ramp = 1.0 / (1.0 + np.exp((Y - posterior_limit) / 8.0))
    weight = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(grid.to_image(cavity), 10.0))
    return (weight * np.broadcast_to(ramp, grid.shape)).astype(np.float32)


def displacement_field(rng: np.random.Generator, motion: PhaseMotion, body: BodyShape, field_grid: Grid,
                       local: tuple[np.random.Generator, float, float] | None = None) -> sitk.Image:
    """Vector image u on field_grid such that scanner point s shows the anatomy at s + u(s). ``local``: (its own
    random stream, std in mm, correlation length in mm) of a deformation at organ-part scale added to the
    30 mm wobble (e.g. 2-4 mm at 10-30 mm: segments of the liver moving against each other)."""
    Z, Y, X = field_grid.axes()
    points = np.stack(np.broadcast_arrays(X, Y, Z), axis=-1).astype(np.float64)  # (z, y, x, 3) as (x, y, z)
    centre = np.asarray(motion.rotation_center_mm)
    rot = Rotation.from_euler("xyz", motion.rotation_deg, degrees=True).as_matrix()
    organ = (points - centre) @ (rot - np.eye(3)).T + np.asarray(motion.organ_shift_mm)
    wobble = smooth_noise(rng, field_grid, 30.0, components=3) * motion.deformation_std_mm
    if local is not None:
        local_rng, std_mm, scale_mm = local
        wobble = wobble + smooth_noise(local_rng, field_grid, scale_mm, components=3) * std_mm
    weight = mobile_weight(body, field_grid)[..., None]
    u = np.asarray(motion.table_shift_mm) + weight * (organ + wobble)
    return field_grid.to_image(u.astype(np.float64))


def as_transform(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    """Transform from a displacement image (copied: the transform takes ownership of its buffer)."""
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def invert(field: sitk.Image) -> sitk.Image:
    """Inverse displacement field (anatomy -> scanner), accurate to ~0.01 mm for these smooth fields."""
    return sitk.InvertDisplacementField(field, maximumNumberOfIterations=60, maxErrorToleranceThreshold=0.01,
                                        meanErrorToleranceThreshold=0.001, enforceBoundaryCondition=False)
