"""Registration error on the phantom: mean absolute HU difference to the ground-truth aligned phases.

Inside the reference liver dilated by 10 mm, each registered phase (as written to the nnU-Net raw dataset) is
compared with the phantom's `<PHASE>_aligned` (the same acquisition pulled through the true motion), and so is
the unregistered phase (identity resampling). The ratio registered / unregistered is the figure the
registration stage is judged by (goal <= 0.40 for every phase).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LIVER_MARGIN_MM = 10.0


def _on(image: sitk.Image, grid: sitk.Image, nearest: bool = False) -> np.ndarray:
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), interp, -1024.0 if not nearest
                                                else 0.0, sitk.sitkFloat32))


def case_errors(phantom_dir: Path, raw_dir: Path, case: str, phases: list[str], ending: str = ".nii.gz"
                ) -> dict[str, tuple[float, float]]:
    """{phase: (unregistered MAE, registered MAE)} in HU for one case."""
    from registration.masks import dilate_mm

    gt = Path(phantom_dir) / "ground_truth" / case
    folder = "imagesTr" if (Path(raw_dir) / "imagesTr" / f"{case}_0000{ending}").is_file() else "imagesTs"
    liver = sitk.ReadImage(str(gt / "label.nii.gz")) > 0
    region = dilate_mm(liver, LIVER_MARGIN_MM)
    out = {}
    for k, phase in enumerate(phases):
        registered = sitk.ReadImage(str(Path(raw_dir) / folder / f"{case}_{k:04d}{ending}"))
        mask = _on(region, registered, nearest=True) > 0
        truth = _on(sitk.ReadImage(str(gt / f"{phase}_aligned.nii.gz")), registered)
        raw = _on(sitk.ReadImage(str(Path(phantom_dir) / case / f"{phase}.nii.gz")), registered)
        reg = sitk.GetArrayFromImage(registered).astype(np.float32)
        valid = mask & (truth > -1000)  # inside the moving scan's field of view
        out[phase] = (float(np.abs(raw - truth)[valid].mean()), float(np.abs(reg - truth)[valid].mean()))
    return out


def registration_errors(phantom_dir: Path, raw_dir: Path) -> dict[str, list[tuple[float, float]]]:
    data = json.loads((Path(raw_dir) / "dataset.json").read_text(encoding="utf-8"))
    phases, ending = data["diff4mm"]["phases"], data.get("file_ending", ".nii.gz")
    cases = sorted(p.name[: -len(f"_0000{ending}")] for folder in ("imagesTr", "imagesTs")
                   for p in (Path(raw_dir) / folder).glob(f"*_0000{ending}"))
    per_phase: dict[str, list[tuple[float, float]]] = {p: [] for p in phases}
    for case in cases:
        for phase, pair in case_errors(phantom_dir, raw_dir, case, phases, ending).items():
            per_phase[phase].append(pair)
    return per_phase


def registration_error_table(phantom_dir: Path, raw_dir: Path) -> list[str]:
    """Markdown rows: per phase, mean MAE unregistered vs registered and their ratio."""
    lines = ["| phase | MAE unregistered (HU) | MAE registered (HU) | ratio (goal <= 0.40) |", "| --- | ---: | ---: | ---: |"]
    for phase, pairs in registration_errors(phantom_dir, raw_dir).items():
        before, after = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
        ratio = f"{after / before:.2f}" if before > 1e-6 else "reference phase"
        lines.append(f"| {phase} | {before:.1f} | {after:.1f} | {ratio} |")
    return lines
