"""A registered nnU-Net raw dataset made from the phantom's truly aligned phases, with normal CTs: the input of
the inpainter, synthesizer and bundle tests (a helper module, not a test module)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_diff4mm.phantom import PHASES, PhantomConfig, generate_case
from registration.image_io import write_image_atomic


def write_registered_phantom(folder: Path, n_cases: int, phases: Sequence[str] = PHASES) -> None:
    """imagesTr/labelsTr of ``n_cases`` phantom cases (seed 1; the given phases, in this order) as
    diff4mm_register writes them, and diff4mm/normal/ normal CTs: the dilated tumor replaced by the liver median
    plus noise (a stand-in for diff4mm_inpaint, seconds instead of a trained inpainter)."""
    folder = Path(folder)
    for sub in ("imagesTr", "labelsTr", "diff4mm/normal/imagesTr", "diff4mm/normal/labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case = generate_case(PhantomConfig(seed=1), "train", i)
        label = case.ground_truth["label"]
        lab = sitk.GetArrayFromImage(label)
        fill = ndimage.binary_dilation(lab == 2)
        rng = np.random.default_rng(i)
        for k, phase in enumerate(phases):
            aligned = case.ground_truth[f"{phase}_aligned"]
            write_image_atomic(aligned, folder / "imagesTr" / f"{case.name}_{k:04d}.nii.gz")
            a = sitk.GetArrayFromImage(aligned).astype(np.float32)
            a[fill] = np.median(a[lab == 1]) + 10 * rng.standard_normal(int(fill.sum()))
            out = sitk.GetImageFromArray(np.rint(a).astype(np.int16))
            out.CopyInformation(aligned)
            write_image_atomic(out, folder / "diff4mm/normal/imagesTr" / f"{case.name}_{k:04d}.nii.gz")
        write_image_atomic(label, folder / "labelsTr" / f"{case.name}.nii.gz")
        write_image_atomic(sitk.Cast(label > 0, sitk.sitkUInt8),
                           folder / "diff4mm/normal/labelsTr" / f"{case.name}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(k): "CT" for k in range(len(phases))},
        "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": n_cases, "file_ending": ".nii.gz",
        "diff4mm": {"phases": list(phases), "reference": "PVP"}}), encoding="utf-8")
