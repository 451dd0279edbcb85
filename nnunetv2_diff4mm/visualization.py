"""PNG montages a person can read: the phases of one case side by side, same physical slice, label contours.

Every stage writes one of these for QA (phantom, registration, inpainting, synthesis).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ABDOMEN_WINDOW = (50.0, 400.0)  # level, width (HU): the radiologist's soft-tissue window
LABEL_COLOURS = {1: "lime", 2: "red"}


def _slice_through(label: np.ndarray | None, shape) -> tuple[int, int]:
    """(axial z, coronal y) indices: through the largest tumor if there is one, else the liver, else centre."""
    if label is not None:
        for value in (2, 1):
            idx = np.argwhere(label == value)
            if len(idx):
                if value == 2:
                    from scipy import ndimage

                    comps, n = ndimage.label(label == 2)
                    biggest = np.argmax(np.bincount(comps.ravel())[1:]) + 1
                    idx = np.argwhere(comps == biggest)
                z, y, _ = np.rint(idx.mean(axis=0)).astype(int)
                return int(z), int(y)
    return shape[0] // 2, shape[1] // 2


def montage(phases: dict[str, sitk.Image], label: sitk.Image | None, path, title: str = "",
            reference: str | None = None, window=ABDOMEN_WINDOW) -> Path:
    """Write a 2-row PNG (axial, coronal) with one column per phase.

    All phases are shown on the grid of `reference` (default: the label's grid, else the first phase) by
    identity resampling, i.e. at the same physical position, so misalignment between phases stays visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(phases)
    ref_image = label if label is not None else phases[reference or names[0]]
    if reference is not None:
        ref_image = phases[reference]
    arrays = {n: sitk.GetArrayFromImage(sitk.Resample(img, ref_image, sitk.Transform(), sitk.sitkLinear,
                                                      -1024.0, sitk.sitkFloat32)) for n, img in phases.items()}
    lab = None
    if label is not None:
        lab = sitk.GetArrayFromImage(sitk.Resample(label, ref_image, sitk.Transform(),
                                                   sitk.sitkNearestNeighbor, 0))
    z, y = _slice_through(lab, ref_image.GetSize()[::-1])
    sx, sy, sz = ref_image.GetSpacing()
    level, width = window
    vmin, vmax = level - width / 2, level + width / 2
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.0), squeeze=False,
                             gridspec_kw={"height_ratios": [1.0, 0.8]})
    for col, name in enumerate(names):
        views = ((arrays[name][z], None if lab is None else lab[z], sy / sx, f"{name} axial z={z}"),
                 (arrays[name][:, y][::-1], None if lab is None else lab[:, y][::-1], sz / sx,
                  f"{name} coronal y={y}"))
        for row, (img, seg, aspect, text) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            if seg is not None:
                for value, colour in LABEL_COLOURS.items():
                    if (seg == value).any() and (seg != value).any():
                        ax.contour(seg >= value, levels=[0.5], colors=colour, linewidths=0.7)
            ax.set_title(text, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(f"{title}   (window L{level:g}/W{width:g}; green liver, red tumor)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
