"""The benchmark's picture of a few test cases: each method's tumor contour on the reference phase, beside the truth.

Rows are test cases, columns the methods; every panel is the same axial slice (through the case's largest reference
tumor), cropped to the liver with a margin, the reference tumor dashed yellow and the method's tumor red. Cases are
chosen from the reference labels alone (spread over tumor volume), never from the results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..visualization import ABDOMEN_WINDOW
from .report import _pyplot, _save_figure


def pick_cases(references: Mapping[str, Path], n: int = 4) -> list[str]:
    """Up to n cases with a tumor, spread evenly over the reference tumor volume (smallest to largest)."""
    volumes = {}
    for case, path in sorted(references.items()):
        voxels = int((sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 2).sum())  # a view of a temporary
        # image dangles once the image is collected (read garbage here in CI: a case without tumor had one)
        if voxels:
            volumes[case] = voxels
    ordered = sorted(volumes, key=lambda c: (volumes[c], c))
    if len(ordered) <= n:
        return ordered
    return [ordered[int(round(i))] for i in np.linspace(0, len(ordered) - 1, n)]


def _largest_tumor_slice(label: np.ndarray) -> int:
    comps, n = ndimage.label(label == 2)
    if n == 0:
        return label.shape[0] // 2
    biggest = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1
    return int(np.rint(np.argwhere(comps == biggest)[:, 0].mean()))


def _crop(label_slice: np.ndarray, spacing_yx, margin_mm: float = 15.0) -> tuple[slice, slice]:
    idx = np.argwhere(label_slice > 0)
    if not len(idx):
        return slice(None), slice(None)
    margin = np.ceil(margin_mm / np.asarray(spacing_yx)).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, label_slice.shape)
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def contour_montage(rows: Sequence[tuple[str, Path, Path, Mapping[str, Path]]], path, title: str = "",
                    window=ABDOMEN_WINDOW) -> Path:
    """rows: (case, reference-phase image, reference label, {method label: predicted label}) -> PNG at path.
    Predictions are shown on the reference label's grid (nearest neighbour, identity transform)."""
    plt = _pyplot()
    if not rows:
        raise ValueError("no cases to draw")
    methods = list(rows[0][3])
    level, width = window
    fig, axes = plt.subplots(len(rows), len(methods), figsize=(2.6 * len(methods), 2.6 * len(rows)), squeeze=False)
    for r, (case, image_path, ref_path, predictions) in enumerate(rows):
        ref = sitk.ReadImage(str(ref_path))
        image = sitk.Resample(sitk.ReadImage(str(image_path)), ref, sitk.Transform(), sitk.sitkLinear, -1024.0,
                              sitk.sitkFloat32)
        ref_arr = sitk.GetArrayFromImage(ref)
        z = _largest_tumor_slice(ref_arr)
        sx, sy, _ = ref.GetSpacing()
        box = _crop(ref_arr[z], (sy, sx))
        img = sitk.GetArrayFromImage(image)[z][box]
        truth = ref_arr[z][box] == 2
        for c, method in enumerate(methods):
            pred = sitk.Resample(sitk.ReadImage(str(predictions[method])), ref, sitk.Transform(),
                                 sitk.sitkNearestNeighbor, 0)
            tumor = sitk.GetArrayFromImage(pred)[z][box] == 2
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=sy / sx,
                      interpolation="nearest")
            for mask, colour, style in ((truth, "yellow", "dashed"), (tumor, "red", "solid")):
                if mask.any() and not mask.all():
                    ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.8, linestyles=style)
            ax.set_title(f"{case}  {method}" if c == 0 else method, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{title}   (dashed yellow: reference tumor; red: predicted tumor; slice through the largest "
                 "reference tumor)", fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path, dpi=100)
