"""Register one contrast phase to the reference phase, focused on the liver (stage 1 of Diff4MMLiTS).

Staged SimpleITK registration, as in the SimpleITK registration notebooks:

1. **Region of interest.** On the reference (fixed) phase: the liver of the label (1 liver + 2 tumor), dilated
   by ``mask_margin_mm`` (a distance map in mm, so anisotropic voxels are respected). Without a label (test
   cases) the fallback is a *body* mask (HU > -500, largest component, holes filled slice-wise, restricted to
   the central part of the body's cranio-caudal extent), recorded as ``mask: "body"`` in the QA. The body also
   holds the spine and back muscles, which do not move with the liver, so the fallback is less accurate.
2. **Working images, an explicit pyramid in mm.** Both phases are cropped to the region's bounding box (the
   moving phase plus ``context_margin_mm`` for the motion), Gaussian smoothed (anti-aliasing + each level's
   ``smoothing_sigmas_mm``) and resampled to isotropic grids of ``working_spacing_mm x shrink`` (2, 4, 8 mm by
   default) in the fixed phase's frame, then clamped to ``hu_window`` so that air and bone do not dominate
   mutual information. Each level is built once per phase and shared by all stages (ITK's own pyramid would
   re-smooth both images for every level of every stage: ~1 s per phase measured). Cost depends on the liver's
   size in mm, not on the scan's voxel count.
3. **Initialisation.** With a liver mask for the moving phase (``<PHASE>_liver`` in the input) the centroids of
   the two masks are aligned (CenteredTransformInitializer, MOMENTS); otherwise the scanner coordinates are
   trusted (identity, rotation centre at the region's centroid): phases of one examination share the table, so
   physical coordinates are the best first guess. Settings without any stage
   (:meth:`RegistrationSettings.without_registration`) keep the identity: the unregistered control.
4. **Rigid (Euler3D) -> affine -> B-spline**, level by level coarse to fine. Mattes mutual information on a
   fixed-seed random sample of the masked fixed level (deterministic: same input, same transform). Rigid and
   affine: regular-step gradient descent with optimizer scales from physical shift. B-spline: one B-spline per
   level, composed (control points ``control_point_spacing_mm`` apart at the finest level, x2 coarser per level
   above), over the metric mask's bounding box, optimised by L-BFGS. A stage whose metric on the finest level
   does not improve is rejected and the previous transform kept.

The result is a composite transform mapping reference (fixed) points to moving points, i.e. what
``sitk.Resample(moving, reference, transform)`` needs: ``[affine, bspline_coarse, ..., bspline_fine]``, plus a
JSON-serialisable QA record (metric before/after, iterations, seconds per stage and level).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from .masks import body_mask, dilate_mm

AIR_HU = -1024.0
INT16_RANGE = (-32768, 32767)
FINEST = (1, 0.0)  # (shrink, sigma) of the finest pyramid level, from which the coarser ones are made
QA_LEVEL = (2, 0.0)  # the level on which stage metrics are compared (every masked voxel: exact, ~20 ms)


@dataclass(frozen=True)
class StageSettings:
    """One transform stage: its resolution levels (coarse to fine) and iterations per level."""

    iterations: int  # per level
    shrink_factors: tuple[int, ...]  # level grid spacing = working_spacing_mm x shrink
    smoothing_sigmas_mm: tuple[float, ...]  # extra Gaussian smoothing of each level's images (on top of anti-aliasing)
    samples: tuple[int, ...]  # metric samples inside the fixed mask, per level (at most all masked voxels)

    def levels(self) -> list[tuple[int, float]]:
        return list(zip(self.shrink_factors, self.smoothing_sigmas_mm))


@dataclass(frozen=True)
class RegistrationSettings:
    """Everything that changes a registration result (stored in the dataset's fingerprint)."""

    working_spacing_mm: float = 2.0  # finest isotropic grid (never finer than this, whatever the scan)
    mask_margin_mm: float = 12.0  # fixed liver mask dilated by this for the metric (capsule + neighbours)
    context_margin_mm: float = 30.0  # the moving working images extend this far beyond the fixed ones (motion)
    hu_window: tuple[float, float] = (-500.0, 400.0)  # clamp before MI: lung base/fat .. enhanced vessels
    histogram_bins: int = 32
    seed: int = 20241229  # metric sampling seed: same input, same result
    sampling: str = "regular"  # "regular" (a grid with random jitter, fixed seed) or "random"
    rigid: StageSettings | None = StageSettings(200, (4, 2), (0.0, 0.0), (4000, 4000))
    affine: StageSettings | None = StageSettings(200, (2,), (0.0,), (4000,))
    # B-spline: one per level, control spacing control_point_spacing_mm at the last level and x2 per level above
    # (200, 100, 50 mm by default); None: no B-spline stage.
    bspline: StageSettings | None = StageSettings(100, (4, 2, 1), (0.0, 0.0, 0.0), (2000, 3000, 6000))
    control_point_spacing_mm: float = 50.0
    # B-spline stop: the metric improved by less than this fraction over the last bspline_stop_window iterations
    # (L-BFGS "delta" test). Without it L-BFGS ran on to solutionAccuracy for 40 % more time and no lower error
    # (benchmarks/registration.py, 4 phantom cases: 6.2 -> 3.8 CPU s/case, MAE 10.1 -> 10.6 HU, elastix 10.8 HU).
    bspline_stop_tolerance: float = 1e-5
    bspline_stop_window: int = 5
    body_threshold_hu: float = -500.0  # fallback mask for cases without a label
    body_central_fraction: float = 0.6  # keep the central part of the body's cranio-caudal extent

    def __post_init__(self) -> None:
        for name in ("rigid", "affine", "bspline"):
            stage = getattr(self, name)
            if stage is not None and not (len(stage.shrink_factors) == len(stage.smoothing_sigmas_mm)
                                          == len(stage.samples) > 0):
                raise ValueError(f"{name}: shrink_factors, smoothing_sigmas_mm and samples need one entry per level")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
            elif isinstance(value, dict):
                data[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RegistrationSettings":
        kwargs = dict(data)
        for key in ("rigid", "affine", "bspline"):
            if kwargs.get(key) is not None:
                kwargs[key] = StageSettings(**{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in kwargs[key].items()})
        kwargs["hu_window"] = tuple(kwargs["hu_window"])
        return cls(**kwargs)

    def without_bspline(self) -> "RegistrationSettings":
        return replace(self, bspline=None)

    def without_registration(self) -> "RegistrationSettings":
        """No stage at all: every phase is only resampled onto the reference grid through the identity (scanner
        coordinates, not even the mask-centroid initialisation). The unregistered control of the paper's central
        claim (aligned synthetic data removes the need for well-registered data)."""
        return replace(self, rigid=None, affine=None, bspline=None)

    @property
    def registers(self) -> bool:
        """False for :meth:`without_registration`: no stage, identity resampling."""
        return any(stage is not None for stage in (self.rigid, self.affine, self.bspline))

    def levels(self) -> list[tuple[int, float]]:
        """Every (shrink, sigma) pyramid level some stage uses, plus the QA level."""
        keys = {FINEST, QA_LEVEL}
        for stage in (self.rigid, self.affine, self.bspline):
            if stage is not None:
                keys.update(stage.levels())
        return sorted(keys, reverse=True)


@dataclass
class Level:
    """One pyramid level of one phase."""

    image: sitk.Image  # float32, clamped to the HU window
    mask: sitk.Image | None  # UInt8 metric mask; None: every voxel counts
    voxels: int  # voxels inside the mask


@dataclass
class FixedSetup:
    """The reference phase prepared once per case and shared by all moving phases."""

    levels: dict[tuple[int, float], Level]  # (shrink, sigma) -> level
    mask_kind: str  # "liver" or "body"
    region: sitk.Image  # liver (or body region) on the finest grid, undilated (UInt8)
    box: tuple[np.ndarray, np.ndarray]  # the fixed working box in the fixed frame (mm)
    roi_box: tuple[np.ndarray, np.ndarray]  # the dilated mask's bounding box in the fixed frame (mm)
    frame: sitk.Image  # the reference phase (its geometry defines the frame)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> sitk.Image:
        """The metric mask (dilated liver or body region) on the finest working grid."""
        return self.levels[FINEST].mask


@dataclass
class RegistrationResult:
    transform: sitk.CompositeTransform  # maps reference points to moving points
    qa: dict[str, Any]


# ----------------------------------------------------------------------------------------------- geometry


def _direction(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)


def _to_frame(frame: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Physical points (N, 3) -> coordinates in mm along ``frame``'s axes, relative to its origin."""
    return (np.asarray(points, float) - np.asarray(frame.GetOrigin())) @ _direction(frame)


def _from_frame(frame: sitk.Image, coords: np.ndarray) -> np.ndarray:
    return np.asarray(frame.GetOrigin()) + np.asarray(coords, float) @ _direction(frame).T


def _corners(image: sitk.Image) -> np.ndarray:
    """Physical positions (8, 3) of the corner voxel centres."""
    size = np.asarray(image.GetSize()) - 1
    idx = np.array(np.meshgrid(*[(0, s) for s in size], indexing="ij")).reshape(3, -1).T
    spacing = np.asarray(image.GetSpacing())
    return _from_frame(image, idx * spacing)


def _frame_extent(frame: sitk.Image, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (in ``frame`` coordinates) of ``image``'s voxel centres."""
    c = _to_frame(frame, _corners(image))
    return c.min(axis=0), c.max(axis=0)


def _mask_box(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (in ``mask``'s own frame, mm) of the nonzero voxel centres."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise ValueError("empty mask: no region to register")
    box = np.asarray(stats.GetBoundingBox(1), dtype=float)
    spacing = np.asarray(mask.GetSpacing())
    lo = box[:3] * spacing
    return lo, (box[:3] + box[3:] - 1) * spacing


def _grid(frame: sitk.Image, lo: np.ndarray, hi: np.ndarray, spacing: float) -> sitk.Image:
    """Empty float image on an isotropic grid covering the box [lo, hi] of ``frame`` coordinates."""
    size = np.maximum(np.ceil((np.asarray(hi) - lo) / spacing).astype(int) + 1, 1)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection(frame.GetDirection())
    grid.SetOrigin(tuple(_from_frame(frame, np.asarray(lo)[None])[0]))
    return grid


def _crop_for(image: sitk.Image, target: sitk.Image, pad_mm: float) -> sitk.Image:
    """The part of ``image`` that ``target``'s grid (plus ``pad_mm``) can sample: saves smoothing full scans."""
    corners = _corners(target)
    dirs = _direction(target) * pad_mm
    signs = np.array(np.meshgrid((-1, 1), (-1, 1), (-1, 1), indexing="ij")).reshape(3, -1).T
    points = (corners[:, None, :] + (signs @ dirs.T)[None]).reshape(-1, 3)
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in points])
    size = np.asarray(image.GetSize())
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, 0, size - 1)
    if np.any(hi < lo):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo + 1], [int(v) for v in lo])


_OUTSIDE = -1.0e6  # resampling default that marks grid points outside the scan


def _to_working(image: sitk.Image, grid: sitk.Image, window: tuple[float, float] | None,
                sigma_mm: float = 0.0) -> tuple[sitk.Image, sitk.Image | None]:
    """``image`` on ``grid``: clamped to ``window`` (so air and bone do not bleed into the smoothing), Gaussian
    smoothed by ``sigma_mm`` plus anti-aliasing along axes that are coarser on ``grid`` (sigma = half the added
    spacing), resampled linearly. Grid points outside ``image`` get the window's lower bound (air); the second
    result marks the points inside ``image`` (UInt8), or is None if all are."""
    target = grid.GetSpacing()[0]
    source = sitk.Cast(_crop_for(image, grid, pad_mm=3 * target + 3 * sigma_mm), sitk.sitkFloat32)
    low = float(window[0]) if window is not None else AIR_HU
    if window is not None:
        source = sitk.Clamp(source, sitk.sitkFloat32, low, float(window[1]))
    variance = [sigma_mm ** 2 + max(target ** 2 - s ** 2, 0.0) / 4.0 for s in source.GetSpacing()]
    if min(v ** 0.5 / s for v, s in zip(variance, source.GetSpacing())) >= 0.8:
        # IIR filter: cost independent of sigma; accurate from about one voxel up
        source = sitk.SmoothingRecursiveGaussian(source, [v ** 0.5 for v in variance])
    elif max(variance) > 0:
        source = sitk.DiscreteGaussian(source, variance=variance, maximumKernelWidth=64, useImageSpacing=True)
    out = sitk.Resample(source, grid, sitk.Transform(), sitk.sitkLinear, _OUTSIDE, sitk.sitkFloat32)
    inside = sitk.Cast(out > _OUTSIDE / 2, sitk.sitkUInt8)
    if sitk.GetArrayViewFromImage(inside).all():
        return out, None
    return sitk.Maximum(out, low), inside


def _pyramid(image: sitk.Image, lo: np.ndarray, hi: np.ndarray, frame: sitk.Image, levels, settings
             ) -> dict[tuple[int, float], tuple[sitk.Image, sitk.Image | None]]:
    """(working image, inside-the-scan mask or None) of the box [lo, hi] for every (shrink, sigma) level.

    The finest level comes from ``image`` itself (anti-aliased); a coarser level is the finest averaged over
    shrink^3 blocks (BinShrink: box anti-aliasing, a single pass), smoothed by sigma mm if sigma > 0. Measured:
    5x cheaper than Gaussian anti-aliasing of the finest level for each coarser level, same accuracy."""
    finest, inside = _to_working(image, _grid(frame, lo, hi, settings.working_spacing_mm), settings.hu_window)
    out = {}
    for shrink, sigma in levels:
        level, level_inside = finest, inside
        if shrink > 1:
            level = sitk.BinShrink(finest, [shrink] * 3)
            if inside is not None:  # inside only where every averaged voxel was inside
                level_inside = sitk.Cast(sitk.BinShrink(sitk.Cast(inside, sitk.sitkFloat32), [shrink] * 3) > 0.999,
                                         sitk.sitkUInt8)
        if sigma > 0:
            level = sitk.SmoothingRecursiveGaussian(level, sigma)
        out[(shrink, sigma)] = level, level_inside
    return out


def _shrink_mask(mask: sitk.Image, shrink: int) -> sitk.Image:
    """A mask on the finest grid brought to a pyramid level (majority of each shrink^3 block, as BinShrink
    places the level's voxels)."""
    if shrink == 1:
        return mask
    return sitk.Cast(sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), [shrink] * 3) > 0.5, sitk.sitkUInt8)


def _mask_to_grid(mask: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """Binary mask resampled onto ``grid`` (partial-volume aware: linear interpolation of the indicator > 0.5)."""
    indicator = sitk.Cast(mask > 0, sitk.sitkFloat32)
    indicator = _crop_for(indicator, grid, pad_mm=2 * grid.GetSpacing()[0])
    if max(indicator.GetSpacing()) < grid.GetSpacing()[0]:
        variance = [max(grid.GetSpacing()[0] ** 2 - s ** 2, 0.0) / 4.0 for s in indicator.GetSpacing()]
        indicator = sitk.DiscreteGaussian(indicator, variance=variance, maximumKernelWidth=64, useImageSpacing=True)
    out = sitk.Resample(indicator, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(out > 0.5, sitk.sitkUInt8)


def upper_abdomen_region(body: sitk.Image, central_fraction: float) -> sitk.Image:
    """``body`` restricted to the central ``central_fraction`` of its extent along the slice (z) axis."""
    array = sitk.GetArrayFromImage(body)
    slices = np.flatnonzero(array.any(axis=(1, 2)))
    if slices.size == 0:
        raise ValueError("no body found above the threshold; is this a CT in HU?")
    z0, z1 = slices[0], slices[-1]
    cut = (1.0 - central_fraction) / 2.0 * (z1 - z0)
    keep = np.zeros_like(array)
    lo, hi = int(np.floor(z0 + cut)), int(np.ceil(z1 - cut))
    keep[lo:hi + 1] = array[lo:hi + 1]
    out = sitk.GetImageFromArray(keep)
    out.CopyInformation(body)
    return out


# ------------------------------------------------------------------------------------------- fixed setup


def _count(mask: sitk.Image) -> int:
    return int(sitk.GetArrayViewFromImage(mask).sum())


def _fixed_region(fixed: sitk.Image, fixed_liver: sitk.Image | None, settings: RegistrationSettings
                  ) -> tuple[str, sitk.Image, np.ndarray, np.ndarray]:
    """(kind, region mask on the finest working grid, working box lo, hi in the fixed frame)."""
    w = settings.working_spacing_mm
    full_lo, full_hi = _frame_extent(fixed, fixed)
    pad = settings.mask_margin_mm + 2 * w  # the dilated mask plus two working voxels
    if fixed_liver is not None:
        if tuple(fixed_liver.GetSize()) != tuple(fixed.GetSize()):
            raise ValueError("the liver mask must be on the reference phase's grid")
        lo, hi = _mask_box(fixed_liver)
        lo, hi = np.maximum(lo - pad, full_lo), np.minimum(hi + pad, full_hi)
        grid = _grid(fixed, lo, hi, w)
        region = _mask_to_grid(fixed_liver, grid)
        if not sitk.GetArrayViewFromImage(region).any():  # a liver thinner than the working grid
            region = sitk.Cast(sitk.Resample(sitk.Cast(fixed_liver > 0, sitk.sitkUInt8), grid, sitk.Transform(),
                                             sitk.sitkNearestNeighbor, 0), sitk.sitkUInt8)
        return "liver", region, lo, hi
    full = _grid(fixed, full_lo, full_hi, w)
    body = upper_abdomen_region(body_mask(_to_working(fixed, full, None)[0], settings.body_threshold_hu),
                                settings.body_central_fraction)
    lo, hi = _mask_box(body)  # in `full`'s frame, whose origin is full_lo
    lo, hi = np.maximum(full_lo + lo - pad, full_lo), np.minimum(full_lo + hi + pad, full_hi)
    grid = _grid(fixed, lo, hi, w)
    region = sitk.Cast(sitk.Resample(body, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0), sitk.sitkUInt8)
    return "body", region, lo, hi


def prepare_fixed(fixed: sitk.Image, fixed_liver: sitk.Image | None = None,
                  settings: RegistrationSettings = RegistrationSettings()) -> FixedSetup:
    """Pyramid and metric masks of the reference phase.

    ``fixed_liver``: the label (any value > 0 counts as liver) or a binary liver mask, on ``fixed``'s grid;
    None for an unlabelled case (body fallback, see the module docstring).
    """
    w = settings.working_spacing_mm
    kind, region, lo, hi = _fixed_region(fixed, fixed_liver, settings)
    mask = dilate_mm(region, settings.mask_margin_mm)
    roi_lo, roi_hi = _mask_box(mask)
    origin = _to_frame(fixed, np.asarray(region.GetOrigin())[None])[0]
    levels = {}
    for (shrink, sigma), (image, _) in _pyramid(fixed, lo, hi, fixed, settings.levels(), settings).items():
        level_mask = _shrink_mask(mask, shrink)
        levels[(shrink, sigma)] = Level(image, level_mask, _count(level_mask))
    voxels = _count(mask)
    info = {"mask": kind, "working_spacing_mm": w, "working_size": list(region.GetSize()),
            "mask_volume_ml": round(voxels * w ** 3 / 1000.0, 1)}
    setup = FixedSetup(levels, kind, region, (lo, hi), (origin + roi_lo, origin + roi_hi), fixed, info)
    with single_threaded_itk():
        # The reference against itself: the best metric any phase can reach in this mask (its entropy), the
        # scale that makes a phase's final metric comparable between cases (see register_phase's "similarity").
        info["metric_reference_self"] = _metric(setup, setup.levels, sitk.Transform(), settings)
    return setup


def _moving_levels(setup: FixedSetup, moving: sitk.Image, moving_liver: sitk.Image | None,
                   settings: RegistrationSettings) -> tuple[dict[tuple[int, float], Level], sitk.Image | None]:
    """The moving phase's pyramid on the fixed working box plus the context margin, with a metric mask that
    excludes points outside the moving scan (they must not count as air) and, given a moving liver mask,
    points outside it (dilated like the fixed one). Also returns the moving liver on the finest grid."""
    lo, hi = setup.box
    lo, hi = lo - settings.context_margin_mm, hi + settings.context_margin_mm
    finest = _grid(setup.frame, lo, hi, settings.working_spacing_mm)
    liver, liver_mask = None, None
    if moving_liver is not None:
        liver = _mask_to_grid(moving_liver, finest)
        if sitk.GetArrayViewFromImage(liver).any():
            liver_mask = dilate_mm(liver, settings.mask_margin_mm)
        else:
            liver = None
    levels = {}
    for (shrink, sigma), (image, mask) in _pyramid(moving, lo, hi, setup.frame, list(setup.levels),
                                                    settings).items():
        if liver_mask is not None:
            level_liver = _shrink_mask(liver_mask, shrink)
            mask = level_liver if mask is None else mask * level_liver
        # mask None: the whole level lies inside the scan, every voxel counts (no per-sample mask test)
        voxels = _count(mask) if mask is not None else int(np.prod(image.GetSize()))
        levels[(shrink, sigma)] = Level(image, mask, voxels)
    return levels, liver


# --------------------------------------------------------------------------------------------- stages


class _Observer:
    """Records the metric value at every optimizer iteration of one level."""

    def __init__(self, method: sitk.ImageRegistrationMethod):
        self.method = method
        self.values: list[float] = []
        method.AddCommand(sitk.sitkIterationEvent, lambda: self.values.append(float(method.GetMetricValue())))


def _method(fixed: Level, moving: Level, samples: int, settings: RegistrationSettings
            ) -> sitk.ImageRegistrationMethod:
    """Mattes MI on a fixed-seed random sample of about ``samples`` masked voxels of one pyramid level."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.REGULAR if settings.sampling == "regular" else method.RANDOM)
    # SimpleITK draws this share of all the level's voxels and drops those outside the mask.
    method.SetMetricSamplingPercentage(min(1.0, samples / max(fixed.voxels, 1)), settings.seed)
    if fixed.mask is not None:
        method.SetMetricFixedMask(fixed.mask)
    if moving.mask is not None:
        method.SetMetricMovingMask(moving.mask)
    method.SetInterpolator(sitk.sitkLinear)
    # Gradients by central differences at the sample points: cheaper than filtering whole images.
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetShrinkFactorsPerLevel([1])  # the pyramid is ours (see the module docstring)
    method.SetSmoothingSigmasPerLevel([0.0])
    return method


def _metric(setup: FixedSetup, moving: dict, transform: sitk.Transform, settings: RegistrationSettings) -> float:
    """Mattes MI of ``transform`` on the QA level (MetricEvaluate uses every masked voxel, whatever the sampling
    settings: exact and comparable between stages)."""
    method = _method(setup.levels[QA_LEVEL], moving[QA_LEVEL], 1, settings)
    # The transform as fixed moving-initial transform and a 3-parameter identity as the optimised one: the
    # evaluation then differentiates w.r.t. 3 parameters instead of every B-spline coefficient.
    method.SetMovingInitialTransform(transform)
    method.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
    return float(method.MetricEvaluate(setup.levels[QA_LEVEL].image, moving[QA_LEVEL].image))


def _coarse_bspline(setup: FixedSetup, spacing_mm: float) -> sitk.BSplineTransform:
    """A zero cubic B-spline over the metric mask's bounding box with control points ~``spacing_mm`` apart."""
    lo, hi = setup.roi_box
    domain = setup.region  # any grid of the frame's direction; only its box [lo, hi] is used
    mesh = [max(1, int(round(e / spacing_mm))) for e in (np.asarray(hi) - lo)]
    return sitk.BSplineTransformInitializer(_grid(setup.frame, lo, hi, domain.GetSpacing()[0]),
                                            transformDomainMeshSize=mesh, order=3)


def _subdivide(coefficients: np.ndarray, axis: int) -> np.ndarray:
    """Cubic B-spline knot insertion along one axis: n = m + 3 control points -> 2m + 3, same curve."""
    c = np.moveaxis(coefficients, axis, 0)
    out = np.empty((2 * c.shape[0] - 3,) + c.shape[1:])
    out[0::2] = (c[:-1] + c[1:]) / 2  # new knots halfway between old control points
    out[1::2] = (c[:-2] + 6 * c[1:-1] + c[2:]) / 8  # old control points, moved
    return np.moveaxis(out, 0, axis)


def refine_bspline(transform: sitk.BSplineTransform) -> sitk.BSplineTransform:
    """The same cubic B-spline deformation on a control grid twice as fine (exact, as ITK's
    BSplineTransformParametersAdaptor does inside a multi-level registration)."""
    images = []
    for image in transform.GetCoefficientImages():
        array = sitk.GetArrayFromImage(image).astype(np.float64)
        for axis in range(3):
            array = _subdivide(array, axis)
        refined = sitk.GetImageFromArray(array)
        spacing = np.asarray(image.GetSpacing()) / 2
        refined.SetSpacing(tuple(spacing))
        refined.SetDirection(image.GetDirection())
        # ITK puts the first control point one spacing before the domain origin (cubic)
        origin = np.asarray(transform.GetTransformDomainOrigin()) - _direction(image) @ spacing
        refined.SetOrigin(tuple(origin))
        images.append(refined)
    return sitk.BSplineTransform(images, 3)


def _run_stage(name: str, setup: FixedSetup, moving: dict, stage: StageSettings, current: sitk.Transform,
               before: float, settings: RegistrationSettings) -> tuple[sitk.Transform, float, dict[str, Any]]:
    """Run one stage level by level, starting from ``current`` (a composite of linear transforms for rigid and
    affine). Returns the new transform, its QA metric and the stage's QA record; a stage that does not improve
    the QA metric over ``before`` is rejected and ``current`` returned unchanged."""
    start = time.perf_counter()
    levels_qa = []
    if name == "rigid":
        optimised: sitk.Transform = sitk.Euler3DTransform(_flatten(current)[-1])
    elif name == "affine":
        optimised = _as_affine(current)
    else:
        affine = _as_affine(current)
        optimised = _coarse_bspline(setup, settings.control_point_spacing_mm * 2 ** (len(stage.samples) - 1))
    for i, ((shrink, sigma), samples) in enumerate(zip(stage.levels(), stage.samples)):
        fixed_level, moving_level = setup.levels[(shrink, sigma)], moving[(shrink, sigma)]
        method = _method(fixed_level, moving_level, samples, settings)
        spacing = settings.working_spacing_mm * shrink
        if name == "bspline":
            if i > 0:
                optimised = refine_bspline(optimised)  # coarse to fine: x2 control points per level
            method.SetMovingInitialTransform(affine)
            method.SetInitialTransform(optimised, inPlace=True)
            # Quasi-Newton: coefficients are displacements in mm (a common physical scale already); estimating
            # physical-shift scales for ~10^3 coefficients cost more than the optimisation (measured 8 s).
            method.SetOptimizerAsLBFGS2(solutionAccuracy=1e-5, numberOfIterations=stage.iterations,
                                        deltaConvergenceTolerance=settings.bspline_stop_tolerance,
                                        deltaConvergenceDistance=settings.bspline_stop_window)
        else:
            method.SetInitialTransform(optimised, inPlace=True)
            # first step (scaled, ~mm of voxel shift): 2 for rigid; 0.5 for affine, which diverged in 3 of 18
            # phantom phases with 1 and 2 (the metric got worse with every step)
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=2.0 if name == "rigid" else 0.5, minStep=0.01, numberOfIterations=stage.iterations,
                relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
            method.SetOptimizerScalesFromPhysicalShift()  # rotations/shears vs translations in comparable steps
        observer = _Observer(method)
        method.Execute(fixed_level.image, moving_level.image)
        values = observer.values
        levels_qa.append({"spacing_mm": spacing, "smoothing_mm": sigma, "samples": samples,
                          "iterations": len(values), "first": values[0] if values else None,
                          "last": values[-1] if values else None,
                          "stop": method.GetOptimizerStopConditionDescription()})
        if name == "bspline":
            mesh = np.asarray(optimised.GetTransformDomainMeshSize())
            levels_qa[-1]["mesh_size"] = mesh.tolist()
            levels_qa[-1]["control_spacing_mm"] = np.round(
                np.asarray(optimised.GetTransformDomainPhysicalDimensions()) / mesh, 1).tolist()
    candidate = sitk.CompositeTransform([affine, optimised] if name == "bspline" else [optimised])
    after = _metric(setup, moving, candidate, settings)
    accepted = after < before  # ITK's Mattes MI is negated: lower is better
    record = {"stage": name, "metric_before": before, "metric_after": after, "accepted": bool(accepted),
              "iterations": sum(level["iterations"] for level in levels_qa), "levels": levels_qa,
              "seconds": round(time.perf_counter() - start, 3)}
    return (candidate, after, record) if accepted else (current, before, record)


def _initial_rigid(setup: FixedSetup, moving_region: sitk.Image | None) -> tuple[sitk.Euler3DTransform, str]:
    if moving_region is not None:
        init = sitk.CenteredTransformInitializer(sitk.Cast(setup.region, sitk.sitkFloat32),
                                                 sitk.Cast(moving_region, sitk.sitkFloat32),
                                                 sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
        return sitk.Euler3DTransform(init), "moments of the liver masks"
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(setup.region)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(stats.GetCentroid(1))
    return transform, "identity (scanner coordinates)"


def _flatten(transform: sitk.Transform) -> list[sitk.Transform]:
    """The transforms inside (possibly nested) composites, flattened, in stored order."""
    transform = transform.Downcast()
    if isinstance(transform, sitk.CompositeTransform):
        parts = []
        for i in range(transform.GetNumberOfTransforms()):
            parts.extend(_flatten(transform.GetNthTransform(i)))
        return parts
    return [transform]


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """A linear transform (Euler3D/affine, possibly inside composites) as one AffineTransform."""
    matrix, offset = np.eye(3), np.zeros(3)
    for part in _flatten(transform):  # composite [A, B] maps x -> A(B(x))
        if not isinstance(part, (sitk.Euler3DTransform, sitk.AffineTransform)):
            raise TypeError(f"not a linear transform: {part.GetName()}")
        m = np.asarray(part.GetMatrix()).reshape(3, 3)
        c, t = np.asarray(part.GetCenter()), np.asarray(part.GetTranslation())
        part_offset = t + c - m @ c
        matrix, offset = matrix @ m, matrix @ part_offset + offset
    affine = sitk.AffineTransform(3)
    centre = np.zeros(3)
    parts = _flatten(transform)
    if parts:
        centre = np.asarray(parts[-1].GetCenter())
    affine.SetCenter(tuple(centre))
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetTranslation(tuple(offset - centre + matrix @ centre))
    return affine


@contextmanager
def single_threaded_itk():
    """Run ITK with one thread inside the block (restored afterwards).

    With several threads ITK's metrics sum per-thread partial results in a scheduling-dependent order, so the
    B-spline stage differs from run to run (measured: 0.2 mm at a point between two identical runs). One thread
    makes a registration a pure function of its inputs; parallelism comes from running cases in separate
    processes. Not safe against other Python threads using ITK at the same time.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def register_phase(setup: FixedSetup, moving: sitk.Image, moving_liver: sitk.Image | None = None,
                   settings: RegistrationSettings = RegistrationSettings()) -> RegistrationResult:
    """Register ``moving`` to the prepared reference phase. ``moving_liver``: optional binary liver mask on
    ``moving``'s grid (narrows the metric to the liver in both phases and initialises by mask centroids).
    ``settings`` must be those given to :func:`prepare_fixed`. Deterministic (single-threaded)."""
    with single_threaded_itk():
        start = time.perf_counter()
        levels, moving_region = _moving_levels(setup, moving, moving_liver, settings)
        # Unregistered (no stage): not even the mask centroids, the scanner coordinates as acquired.
        rigid, init = _initial_rigid(setup, moving_region if settings.registers else None)
        current: sitk.Transform = sitk.CompositeTransform([rigid])
        metric = _metric(setup, levels, current, settings)
        records: list[dict[str, Any]] = [{"stage": "initial", "method": init, "metric_after": metric}]
        for name in ("rigid", "affine", "bspline"):
            stage = getattr(settings, name)
            if stage is None:
                continue
            if name == "bspline":
                current = sitk.CompositeTransform([_as_affine(current)])
            current, metric, record = _run_stage(name, setup, levels, stage, current, metric, settings)
            records.append(record)
        parts = _flatten(current)
        if not any(isinstance(p, sitk.BSplineTransform) for p in parts):
            parts = [_as_affine(current)]
        final = sitk.CompositeTransform(parts)  # [affine] or [affine, bspline, ...]
        qa = {**setup.info, "moving_mask": moving_region is not None, "initialisation": init,
              "metric_initial": records[0]["metric_after"], "metric_final": metric,
              "similarity": similarity(metric, setup), "stages": records,
              **displacement_summary(final, setup, moving), "seconds": round(time.perf_counter() - start, 3)}
    return RegistrationResult(final, qa)


def register(fixed: sitk.Image, moving: sitk.Image, fixed_liver: sitk.Image | None = None,
             moving_liver: sitk.Image | None = None,
             settings: RegistrationSettings = RegistrationSettings()) -> RegistrationResult:
    """Register one moving phase to the reference phase (see the module docstring): :func:`prepare_fixed` +
    :func:`register_phase` for a single pair."""
    with single_threaded_itk():
        setup = prepare_fixed(fixed, fixed_liver, settings)
    return register_phase(setup, moving, moving_liver, settings)


# ------------------------------------------------------------------------------------------ applying


def similarity(metric: float, setup: FixedSetup) -> float | None:
    """A phase's final Mattes MI relative to the reference phase's MI with itself in the same mask (the metric
    is negated MI, so both are negative): 1 = as similar as the reference to itself, 0 = independent. Unlike the
    raw metric it does not depend on the case's entropy, so one threshold serves every case. Measured on the
    phantom: 0.51-0.83 for every registered phase, 0.00-0.23 for a phase whose header origin is 100-200 mm off
    (registration cannot recover it and stays where it started). None if the reference has no information."""
    best = setup.info.get("metric_reference_self")
    if best is None or not best < 0:
        return None
    return round(float(metric) / float(best), 4)


def displacement_summary(transform: sitk.Transform, setup: FixedSetup, moving: sitk.Image | None = None,
                         max_points: int = 1000) -> dict[str, float]:
    """Mean and max length (mm) of the transform's displacement over the liver (or body) region, from an evenly
    strided subset of its voxels: a QA figure that flags runaway registrations (breathing rarely moves the
    liver by more than ~30 mm). Given the ``moving`` phase, also ``region_inside_fraction``: the share of those
    points that the transform maps inside the moving scan (1 for a phase that covers the liver; a phase mapped
    mostly outside its own scan was not registered, its output there is air)."""
    index = np.argwhere(sitk.GetArrayViewFromImage(setup.region) > 0)[:, ::-1]  # (x, y, z)
    index = index[:: max(1, len(index) // max_points)]
    lengths, inside = [0.0], 0
    size = np.asarray(moving.GetSize()) if moving is not None else None
    for i in index:
        point = setup.region.TransformIndexToPhysicalPoint([int(v) for v in i])
        mapped = transform.TransformPoint(point)
        lengths.append(float(np.linalg.norm(np.subtract(mapped, point))))
        if size is not None:
            at = np.asarray(moving.TransformPhysicalPointToContinuousIndex(mapped))
            inside += bool(np.all(at >= -0.5) and np.all(at <= size - 0.5))
    lengths = np.asarray(lengths[1:] or lengths)
    out = {"displacement_mean_mm": round(float(lengths.mean()), 3),
           "displacement_max_mm": round(float(lengths.max()), 3)}
    if size is not None:
        out["region_inside_fraction"] = round(inside / max(len(index), 1), 4)
    return out


def resample_to_reference(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
                          default: float = AIR_HU) -> sitk.Image:
    """``moving`` on ``reference``'s grid through ``transform`` (identity if None): linear interpolation,
    outside the scan ``default`` (air), rounded to int16 HU."""
    transform = transform if transform is not None else sitk.Transform()
    out = sitk.Resample(moving, reference, transform, sitk.sitkLinear, default, sitk.sitkFloat32)
    out = sitk.Clamp(sitk.Round(out), sitk.sitkFloat32, float(INT16_RANGE[0]), float(INT16_RANGE[1]))
    return sitk.Cast(out, sitk.sitkInt16)
