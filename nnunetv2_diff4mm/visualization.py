"""PNG montages a person can read: the phases of one case side by side, same physical slice, label contours.

Every stage writes one of these for QA (phantom, inpainting, synthesis: :func:`montage`; registration:
:func:`registration_montage`, before and after, zoomed on the liver).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

ABDOMEN_WINDOW = (50.0, 400.0)  # level, width (HU): the radiologist's soft-tissue window
LABEL_COLOURS = {1: "lime", 2: "red"}
PREDICTION_COLOURS = {1: "yellow", 2: "magenta"}  # a prediction beside the label: other colours, dashed


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
            reference: str | None = None, window=ABDOMEN_WINDOW, prediction: sitk.Image | None = None) -> Path:
    """Write a 2-row PNG (axial, coronal) with one column per phase.

    All phases are shown on the grid of `reference` (default: the label's grid, else the first phase) by
    identity resampling, i.e. at the same physical position, so misalignment between phases stays visible.
    `prediction` (a segmentation, 1 liver, 2 tumor) is drawn dashed beside the label's contours (yellow liver,
    magenta tumor); the slice goes through the label's largest tumor, else the prediction's.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(phases)
    ref_image = label if label is not None else phases[reference or names[0]]
    if reference is not None:
        ref_image = phases[reference]
    arrays = {n: _on_grid(img, ref_image) for n, img in phases.items()}
    lab = None if label is None else _on_grid(label, ref_image, label=True)
    pred = None if prediction is None else _on_grid(prediction, ref_image, label=True)
    z, y = _slice_through(lab if lab is not None and (lab == 2).any() or pred is None else pred,
                          ref_image.GetSize()[::-1])
    sx, sy, sz = ref_image.GetSpacing()
    level, width = window
    vmin, vmax = level - width / 2, level + width / 2
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.0), squeeze=False,
                             gridspec_kw={"height_ratios": [1.0, 0.8]})
    for col, name in enumerate(names):
        views = ((arrays[name][z], None if lab is None else lab[z], None if pred is None else pred[z], sy / sx,
                  f"{name} axial z={z}"),
                 (arrays[name][:, y][::-1], None if lab is None else lab[:, y][::-1],
                  None if pred is None else pred[:, y][::-1], sz / sx, f"{name} coronal y={y}"))
        for row, (img, seg, predicted, aspect, text) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            for mask, colours, style in ((seg, LABEL_COLOURS, "solid"), (predicted, PREDICTION_COLOURS, "dashed")):
                if mask is None:
                    continue
                for value, colour in colours.items():
                    if (mask == value).any() and (mask != value).any():
                        ax.contour(mask >= value, levels=[0.5], colors=colour, linewidths=0.7, linestyles=style)
            ax.set_title(text, fontsize=8)
            ax.axis("off")
    if title:
        legend = "green liver, red tumor" + ("; prediction dashed: yellow liver, magenta tumor" if pred is not None
                                             else "")
        fig.suptitle(f"{title}   (window L{level:g}/W{width:g}; {legend})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    from registration.image_io import write_atomic

    try:
        return write_atomic(Path(path), lambda handle: fig.savefig(handle, dpi=110, format="png"), binary=True,
                            make_parents=True)
    finally:
        plt.close(fig)


def _on_grid(image: sitk.Image, grid: sitk.Image, label: bool = False) -> np.ndarray:
    """``image`` on ``grid`` through the identity (the same physical place), as an array."""
    if label:
        return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0,
                                                sitk.sitkFloat32))


def _zoom_box(region: np.ndarray, spacing_zyx, margin_mm: float) -> tuple[slice, slice, slice]:
    """The bounding box of ``region`` grown by ``margin_mm`` (the whole grid where the region is empty)."""
    idx = np.argwhere(region)
    if not len(idx):
        return tuple(slice(0, n) for n in region.shape)
    grow = np.ceil(margin_mm / np.asarray(spacing_zyx, float)).astype(int)
    lo = np.maximum(idx.min(0) - grow, 0)
    hi = np.minimum(idx.max(0) + grow + 1, region.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def registration_montage(phases: dict[str, sitk.Image], label: sitk.Image | None, path, title: str = "",
                         before: dict[str, sitk.Image] | None = None, region: sitk.Image | None = None,
                         region_kind: str = "liver", reference: str | None = None, window=ABDOMEN_WINDOW,
                         margin_mm: float = 20.0) -> Path:
    """The registration QA picture: for every phase (columns) the axial and coronal slice through the largest
    tumor (else the liver centre), **before** (as acquired, identity-resampled onto the reference grid) and
    **after** registration, zoomed on the liver (its bounding box + ``margin_mm``), with the reference liver
    contour drawn at the same place in every panel: where a phase's liver edge leaves the contour, it is not
    aligned. ``region`` is the registration's mask for a case without a label (the given or first-pass liver,
    or the body), drawn instead; ``region_kind`` names it. ``before=None`` draws the "after" rows only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(phases)
    grid = label if label is not None else phases[reference or names[0]]
    lab = None if label is None else _on_grid(label, grid, label=True)
    outline = None
    if lab is None and region is not None:
        outline = _on_grid(region, grid, label=True) > 0
    # the zoom: the liver (label, or the mask of an unlabelled case); a body mask would show the whole slice anyway
    focus = (lab > 0) if lab is not None else outline if region_kind != "body" else None
    z, y = _slice_through(lab if lab is not None else None if outline is None else outline.astype(np.uint8),
                          grid.GetSize()[::-1])
    sx, sy, sz = grid.GetSpacing()
    box = (_zoom_box(focus, (sz, sy, sx), margin_mm) if focus is not None
           else tuple(slice(0, n) for n in grid.GetSize()[::-1]))
    rows = [("after", phases)] if before is None else [("before", before), ("after", phases)]
    level, width = window
    vmin, vmax = level - width / 2, level + width / 2
    fig, axes = plt.subplots(2 * len(rows), len(names), figsize=(2.8 * len(names), 2.7 * 2 * len(rows)),
                             squeeze=False)
    for r, (when, images) in enumerate(rows):
        for col, name in enumerate(names):
            array = _on_grid(images[name], grid)
            views = ((array[z][box[1], box[2]], None if lab is None else lab[z][box[1], box[2]],
                      None if outline is None else outline[z][box[1], box[2]], sy / sx, f"{name} {when}, axial"),
                     (array[box[0], y][::-1][:, box[2]], None if lab is None else lab[box[0], y][::-1][:, box[2]],
                      None if outline is None else outline[box[0], y][::-1][:, box[2]], sz / sx,
                      f"{name} {when}, coronal"))
            for v, (img, seg, out_line, aspect, text) in enumerate(views):
                ax = axes[2 * r + v, col]
                ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
                if seg is not None:
                    for value, colour in LABEL_COLOURS.items():
                        if (seg >= value).any() and (seg < value).any():
                            ax.contour(seg >= value, levels=[0.5], colors=colour, linewidths=0.8)
                if out_line is not None and out_line.any() and not out_line.all():
                    ax.contour(out_line, levels=[0.5], colors="cyan", linewidths=0.8)
                ax.set_title(text, fontsize=8)
                ax.axis("off")
    what = ("reference liver green, tumor red" if lab is not None else
            f"registration mask ({region_kind}) cyan" if outline is not None else "no label")
    fig.suptitle(f"{title}   (window L{level:g}/W{width:g}; {what}, drawn at the same place in every panel: "
                 "an edge leaving it is misaligned)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def change_montage(before: dict[str, sitk.Image], after: dict[str, sitk.Image], region: sitk.Image, path,
                   title: str = "", names: tuple[str, str] = ("before", "after"), outline_after: bool = True,
                   window=ABDOMEN_WINDOW, difference_hu: float = 100.0, margin_mm: float = 20.0) -> Path:
    """What a stage changed, per phase: one row per phase, columns ``before``, ``after`` and after − before (HU,
    blue darker / red brighter, ±``difference_hu``), zoomed on ``region`` (bounding box + ``margin_mm``) at the
    axial slice through its largest component, the region outlined (cyan) on ``before`` and, with
    ``outline_after``, on ``after`` too. Inpainting QA: registered / normal with the replaced region; synthesis QA:
    normal / synthetic with the tumor mask outlined beside the painted tumor, not over it (``outline_after=False``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(after)
    grid = next(iter(after.values()))
    mask = _on_grid(region, grid, label=True) > 0
    z, _ = _slice_through(mask.astype(np.uint8) * 2, grid.GetSize()[::-1])
    sx, sy, sz = grid.GetSpacing()
    box = _zoom_box(mask, (sz, sy, sx), margin_mm)
    level, width = window
    vmin, vmax = level - width / 2, level + width / 2
    fig, axes = plt.subplots(len(phases), 3, figsize=(3 * 2.9, 2.8 * len(phases)), squeeze=False)
    outline = mask[z][box[1], box[2]]
    for row, phase in enumerate(phases):
        a = _on_grid(before[phase], grid)[z][box[1], box[2]]
        b = _on_grid(after[phase], grid)[z][box[1], box[2]]
        for col, (img, text) in enumerate(((a, names[0]), (b, names[1]))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=sy / sx, interpolation="nearest")
            if (col == 0 or outline_after) and outline.any() and not outline.all():
                ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{phase} {text}", fontsize=8)
            ax.axis("off")
        ax = axes[row, 2]
        shown = ax.imshow(b - a, cmap="coolwarm", vmin=-difference_hu, vmax=difference_hu, aspect=sy / sx,
                          interpolation="nearest")
        ax.set_title(f"{phase} {names[1]} − {names[0]} (HU)", fontsize=8)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"{title}\n(axial z={z}, window L{level:g}/W{width:g}; cyan: the region)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
