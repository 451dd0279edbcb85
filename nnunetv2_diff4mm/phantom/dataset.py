"""Generate and write phantom cases in the multi-phase input layout, with their evaluation ground truth.

Layout written under OUT (see docs/phantom.md):
    phantom.json                          generator settings (a re-run with other settings is refused)
    case_000/{NC,AP,PVP,DELAY}.nii.gz     phases in HU (int16), each on its own grid, misaligned like breathing
    case_000/label.nii.gz                 0/1/2 on the PVP grid (training cases only)
    test_000/...                          held-out cases: phases only
    ground_truth/<case>/                  label.nii.gz, <phase>_aligned.nii.gz (phase resampled onto the PVP grid
                                          through the true motion), <phase>_label.nii.gz (label in the phase's
                                          own space), <phase>_displacement.nii.gz (true PVP->phase displacement,
                                          mm), case.json (motion parameters, tumors)
Each case is drawn from its own seed stream (seed, split, index), so case k is identical whatever the count.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration.image_io import write_image_atomic, write_json_atomic

from . import acquisition, motion
from .anatomy import build_anatomy
from .config import PhantomConfig  # noqa: F401 (part of this module's API)
from .grid import Grid
from .tissues import NOISE_HU, PHASES, REFERENCE_PHASE

REFERENCE_FOV_MM = ((-160.0, -125.0, -90.0), (160.0, 125.0, 90.0))  # x, y, z of the PVP scan (LPS)
# Per-phase voxel size relative to the reference phase, and cranio-caudal extent change (mm).
PHASE_SPACING_FACTOR = {"NC": (1.1, 1.1, 1.2), "AP": (0.95, 0.95, 1.0), "PVP": (1.0, 1.0, 1.0),
                        "DELAY": (1.05, 1.05, 1.0)}
SPLITS = {"train": "case", "test": "test"}


@dataclass
class PhantomCase:
    name: str
    images: dict[str, sitk.Image]
    label: sitk.Image | None  # None for test cases
    ground_truth: dict[str, sitk.Image]
    info: dict = field(default_factory=dict)


def case_name(split: str, index: int) -> str:
    return f"{SPLITS[split]}_{index:03d}"


def _phase_grid(rng, phase: str, spacing) -> Grid:
    lower, upper = (np.asarray(v, float) for v in REFERENCE_FOV_MM)
    if phase != REFERENCE_PHASE:
        dz = rng.uniform(-10, 10)
        lower = lower + (0, 0, dz - rng.uniform(0, 10))
        upper = upper + (0, 0, dz + rng.uniform(0, 10))
    return Grid.covering(lower, upper, np.asarray(spacing) * PHASE_SPACING_FACTOR[phase])


def _liver_slab(images: tuple[sitk.Image, ...], extent_mm: float) -> tuple[sitk.Image, ...]:
    """The slices of a scan within ``extent_mm`` cranio-caudally, centred on the liver in that scan (the second
    image, its label): a liver-only acquisition. Physical positions are kept (slicing, not resampling)."""
    label = sitk.GetArrayViewFromImage(images[1])
    slices = np.flatnonzero((label > 0).any(axis=(1, 2)))
    centre = (slices[0] + slices[-1]) / 2.0
    half = extent_mm / images[1].GetSpacing()[2] / 2.0
    z0, z1 = max(int(np.ceil(centre - half)), 0), min(int(np.floor(centre + half)) + 1, label.shape[0])
    return tuple(image[:, :, z0:z1] for image in images)


def generate_case(config: PhantomConfig, split: str, index: int, noise_free: bool = False) -> PhantomCase:
    """Draw and scan one patient in all phases.

    ``noise_free`` adds ``<phase>_aligned_noise_free`` (float32) to the ground truth: the aligned phase without
    CT noise, for benchmarks that compare a fill with the structure under it. The noisy images are unchanged.
    """
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, list(SPLITS).index(split), index]))
    grids = {p: _phase_grid(rng, p, config.spacing) for p in PHASES}
    margin = config.max_shift_mm + 25.0
    lower = np.min([g.origin for g in grids.values()], axis=0) - margin
    upper = np.max([g.upper for g in grids.values()], axis=0) + margin
    atlas_spacing = np.maximum(np.asarray(config.spacing) * 0.6, 0.5)
    anatomy = build_anatomy(rng, Grid.covering(lower, upper, atlas_spacing), config.max_tumors)
    uptake = {p: (1.0 if p == "NC" else float(rng.uniform(0.85, 1.15))) for p in PHASES}
    hu = acquisition.hu_atlases(anatomy, uptake)
    field_grid = Grid.covering(lower, upper, (motion.FIELD_SPACING_MM,) * 3)
    reference = grids[REFERENCE_PHASE]

    images, truth, motions = {}, {}, {}
    for phase in PHASES:
        if phase == REFERENCE_PHASE:
            params = motion.identity_motion(anatomy.liver_center_mm)
            to_anatomy = to_scanner = sitk.Transform()
        else:
            params = motion.sample_motion(rng, anatomy.liver_center_mm, config.max_shift_mm)
            local = None
            if config.local_deformation_mm:  # its own stream: the rest of the case stays as without it
                local_rng = np.random.default_rng(np.random.SeedSequence(
                    [config.seed, list(SPLITS).index(split), index, 1 + PHASES.index(phase)]))
                local = (local_rng, config.local_deformation_mm, config.local_deformation_scale_mm)
            field = motion.displacement_field(rng, params, anatomy.body, field_grid, local)
            inverse = motion.invert(field)
            truth[f"{phase}_displacement"] = sitk.Cast(inverse, sitk.sitkVectorFloat32)
            to_anatomy, to_scanner = motion.as_transform(field), motion.as_transform(inverse)
        motions[phase] = params.to_json()
        clean = acquisition.scan_noise_free(anatomy, hu[phase], grids[phase], to_anatomy)
        images[phase] = acquisition.add_ct_noise(clean, grids[phase], NOISE_HU[phase], rng)
        truth[f"{phase}_label"] = acquisition.label_map(anatomy, grids[phase], to_anatomy)
        if phase in config.liver_only_phases:
            images[phase], truth[f"{phase}_label"], clean = _liver_slab(
                (images[phase], truth[f"{phase}_label"], clean), config.liver_only_extent_mm)

        def aligned(image: sitk.Image) -> sitk.Image:
            """What a perfect registration would produce: `image` pulled onto the reference grid."""
            return sitk.Resample(image, reference.reference_image(), to_scanner, sitk.sitkLinear, -1024.0,
                                 sitk.sitkFloat32)

        truth[f"{phase}_aligned"] = reference.to_image(np.rint(sitk.GetArrayFromImage(aligned(images[phase])))
                                                       .astype(np.int16))
        if noise_free:
            truth[f"{phase}_aligned_noise_free"] = aligned(clean)
    label = truth[f"{REFERENCE_PHASE}_label"]
    truth["label"] = label
    label_array = sitk.GetArrayViewFromImage(label)
    info = {
        "case": case_name(split, index), "split": split, "uptake": uptake, "motion": motions,
        "tumors": [asdict(t) for t in anatomy.tumors],
        "tumor_voxels_in_label": int((label_array == 2).sum()),
        "liver_volume_ml": float((label_array > 0).sum() * np.prod(reference.spacing) / 1000.0),
    }
    return PhantomCase(case_name(split, index), images, label if split == "train" else None, truth, info)


def write_case(case: PhantomCase, out_dir: Path) -> None:
    """Write a case so that it appears complete or not at all: ground truth first, then the case folder is
    assembled in a hidden staging folder and renamed into place."""
    out_dir = Path(out_dir)
    gt_dir = out_dir / "ground_truth" / case.name
    gt_dir.mkdir(parents=True, exist_ok=True)
    for key, image in case.ground_truth.items():
        write_image_atomic(image, gt_dir / f"{key}.nii.gz")
    write_json_atomic(gt_dir / "case.json", case.info)

    staging = out_dir / f".{case.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for phase, image in case.images.items():
        write_image_atomic(image, staging / f"{phase}.nii.gz")
    if case.label is not None:
        write_image_atomic(case.label, staging / "label.nii.gz")
    os.replace(staging, out_dir / case.name)


class PhantomFolderError(ValueError):
    """The output folder holds something other than a phantom made with the same settings."""


def _check_output_folder(out_dir: Path, config: PhantomConfig) -> None:
    settings = out_dir / "phantom.json"
    if settings.exists():
        stored = json.loads(settings.read_text(encoding="utf-8"))
        wanted = config.to_json()
        diff = [k for k in wanted if stored.get(k) != wanted[k]]
        if diff:
            k = diff[0]
            raise PhantomFolderError(
                f"{settings}: made with {k}={stored.get(k)!r}, not {wanted[k]!r}; choose another output folder "
                "or delete this one")
    elif out_dir.exists() and any(p for p in out_dir.iterdir() if not p.name.startswith(".")):
        raise PhantomFolderError(f"{out_dir}: not empty and not a phantom folder (no phantom.json); "
                                 "choose an empty or new folder")


def _generate_and_write(args) -> str:
    config, split, index, out_dir = args
    write_case(generate_case(config, split, index), Path(out_dir))
    return case_name(split, index)


def write_phantom_dataset(out_dir, config: PhantomConfig, cases: int, test_cases: int = 0,
                          num_processes: int = 1, progress: bool = True) -> list[str]:
    """Generate `cases` labelled and `test_cases` unlabelled cases into out_dir; resumable (finished cases are
    kept, half-written ones redone). Returns the names of all cases the folder now holds for these counts."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    _check_output_folder(out_dir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = out_dir / "phantom.json"
    if not settings.exists():
        write_json_atomic(settings, config.to_json())
    jobs = [(split, i) for split, n in (("train", cases), ("test", test_cases)) for i in range(n)]
    todo = [(config, s, i, str(out_dir)) for s, i in jobs if not (out_dir / case_name(s, i)).is_dir()]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="phantom cases", unit="case",
               disable=not progress)
    if num_processes > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(num_processes, initializer=_single_threaded_itk) as pool:
            for _ in pool.imap_unordered(_generate_and_write, todo):
                bar.update()
    else:
        for job in todo:
            _generate_and_write(job)
            bar.update()
    bar.close()
    return [case_name(s, i) for s, i in jobs]


def _single_threaded_itk() -> None:
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
