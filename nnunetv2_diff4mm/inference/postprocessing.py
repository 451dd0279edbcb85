"""Post-processing of a predicted segmentation in the paper's sense, and the figures a per-case report needs.

The paper keeps only tumors inside the liver. Rule: a tumor component (connected tumor voxels, 26-connected) is
kept when at least one of its voxels lies within ``dilation_mm`` (Euclidean, in mm, so anisotropic voxels are
respected) of a predicted liver voxel; otherwise it is set to background. The dilation keeps a tumor that bulges
out of the liver, or sits at its edge where the liver label is thin, whose liver neighbours are tumor-coloured
themselves. Volumes are in ml from the image's voxel spacing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

DEFAULT_DILATION_MM = 5.0


def _components(mask: sitk.Image) -> tuple[np.ndarray, int]:
    labelled = sitk.ConnectedComponent(sitk.Cast(mask, sitk.sitkUInt8), True)  # fully connected: 26-neighbours
    array = sitk.GetArrayFromImage(labelled)
    return array, int(array.max())


def voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


@dataclass
class PostprocessingResult:
    segmentation: sitk.Image
    removed_volumes_ml: list[float] = field(default_factory=list)  # the tumor components removed, largest first

    def to_json(self, dilation_mm: float) -> dict:
        return {"enabled": True, "rule": f"tumor components more than {dilation_mm:g} mm from the predicted liver "
                                         "removed", "dilation_mm": dilation_mm,
                "removed_tumors": len(self.removed_volumes_ml),
                "removed_volumes_ml": [round(v, 3) for v in self.removed_volumes_ml]}


def remove_tumors_outside_liver(segmentation: sitk.Image, liver_label: int = 1, tumor_label: int = 2,
                                dilation_mm: float = DEFAULT_DILATION_MM) -> PostprocessingResult:
    """``segmentation`` with every tumor component that does not reach the liver (dilated by ``dilation_mm``)
    set to background; the liver and the kept tumors are unchanged."""
    from registration.masks import dilate_mm

    array = sitk.GetArrayFromImage(segmentation)
    tumor = array == tumor_label
    if not tumor.any():
        return PostprocessingResult(segmentation, [])
    liver = sitk.GetImageFromArray((array == liver_label).astype(np.uint8))
    liver.CopyInformation(segmentation)
    near_liver = sitk.GetArrayFromImage(dilate_mm(liver, dilation_mm)) > 0 if (array == liver_label).any() \
        else np.zeros_like(tumor)
    tumor_image = sitk.GetImageFromArray(tumor.astype(np.uint8))
    tumor_image.CopyInformation(segmentation)
    components, n = _components(tumor_image)
    kept_ids = np.unique(components[near_liver & tumor])
    remove = tumor & ~np.isin(components, kept_ids)
    if not remove.any():
        return PostprocessingResult(segmentation, [])
    counts = np.bincount(components[remove], minlength=n + 1)[1:]
    removed = sorted((c * voxel_ml(segmentation) for c in counts if c > 0), reverse=True)
    out_array = array.copy()
    out_array[remove] = 0
    out = sitk.GetImageFromArray(out_array)
    out.CopyInformation(segmentation)
    return PostprocessingResult(out, removed)


def segmentation_summary(segmentation: sitk.Image, liver_label: int = 1, tumor_label: int = 2) -> dict:
    """Liver volume (ml, liver + tumor voxels: the organ), tumor count and volumes (26-connected components,
    largest first, ml)."""
    array = sitk.GetArrayViewFromImage(segmentation)
    ml = voxel_ml(segmentation)
    tumor = sitk.Cast(segmentation == tumor_label, sitk.sitkUInt8)
    components, n = _components(tumor)
    volumes = sorted((float(c) * ml for c in np.bincount(components.ravel(), minlength=n + 1)[1:] if c > 0),
                     reverse=True)
    organ = int(np.count_nonzero((array == liver_label) | (array == tumor_label)))
    return {"liver_volume_ml": round(organ * ml, 2),
            "liver_parenchyma_ml": round(int(np.count_nonzero(array == liver_label)) * ml, 2),
            "tumors": len(volumes), "tumor_volumes_ml": [round(v, 3) for v in volumes],
            "tumor_burden_ml": round(sum(volumes), 3)}
