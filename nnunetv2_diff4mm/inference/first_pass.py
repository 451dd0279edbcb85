"""The first-pass liver mask of an unlabelled case: the trained model itself on the unregistered phases.

Registration is liver-focused (registration/register.py): a labelled case is registered inside its dilated
label, an unlabelled one inside whatever liver mask it has, else inside the body mask, which also holds the
spine and back muscles that do not move with the liver (1.5-2x the labelled path's error on the phantom,
docs/decisions.md, "Inference"). The first pass gives an unlabelled case a liver mask: the phases resampled
onto the reference grid as acquired (identity transform), segmented by the model (mirroring off: the liver is
large and this pass only has to find it), liver + tumor labels, largest 26-connected component. Below
``MIN_FIRST_PASS_LIVER_ML`` it found no liver, and the body mask is used instead (the record says so).

Two users: ``diff4mm_predict`` (per new patient) and ``diff4mm_register --first-pass-model`` (the unlabelled
imagesTs cases of a dataset, so they are registered like the training cases); :class:`ModelFirstPass` is the
callable ``registration.nnunet_raw.write_registered_dataset`` takes (registration/ never imports this package).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from registration.inputs import InputError
from registration.field_of_view import fill_outside_scans, inside_scan
from registration.register import resample_to_reference

from .model import DEFAULT_CHECKPOINT, DEFAULT_FOLDS, Diff4MMModel, model_identity
from .postprocessing import voxel_ml

# Below this, the first pass did not find a liver (an adult liver is 1-2 l; the phantom's ~1.2-1.8 l).
MIN_FIRST_PASS_LIVER_ML = 100.0


def stack_phases(images: Mapping[str, sitk.Image], phases: Sequence[str]) -> np.ndarray:
    """The phases as nnU-Net's channel stack (c, z, y, x), float32, in channel order."""
    return np.stack([sitk.GetArrayFromImage(images[p]) for p in phases]).astype(np.float32)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself if it has at most one)."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


def liver_from_segmentation(seg: np.ndarray, fixed: sitk.Image, info, min_liver_ml: float = MIN_FIRST_PASS_LIVER_ML
                            ) -> tuple[sitk.Image | None, dict[str, Any]]:
    """(the largest liver + tumor component of a segmentation on ``fixed``'s grid as a mask, or None when it
    holds less than ``min_liver_ml``; its JSON record). ``info``: the model's :class:`ModelInfo` (labels)."""
    organ = (seg == info.liver_label) | (seg == info.tumor_label)
    ml = voxel_ml(fixed)
    largest = largest_component(organ) if organ.any() else organ
    liver_ml = float(largest.sum()) * ml
    record: dict[str, Any] = {"found_ml": round(float(organ.sum()) * ml, 1), "liver_ml": round(liver_ml, 1),
                              "min_liver_ml": min_liver_ml}
    if liver_ml < min_liver_ml:
        return None, record
    out = sitk.GetImageFromArray(largest.astype(np.uint8))
    out.CopyInformation(fixed)
    return out, record


def liver_from_model(model: Diff4MMModel, images: Mapping[str, sitk.Image], filled: Mapping[str, str] | None = None,
                     min_liver_ml: float = MIN_FIRST_PASS_LIVER_ML, outside_fill: str = "air"
                     ) -> tuple[sitk.Image | None, dict[str, Any]]:
    """(the liver mask on the reference phase's grid, or None when the model found less than ``min_liver_ml``;
    its JSON record). ``images``: the case's phases as read, by phase name; ``filled``: {missing phase: the
    phase whose copy stands in for it}; ``outside_fill``: what the network sees outside a phase's scan
    (registration/field_of_view.py)."""
    info = model.info
    fixed = images[info.reference]
    identity = {p: resample_to_reference(images[p], fixed) for p in images}
    if outside_fill != "air":  # air is what resampling left there: no field-of-view masks to compute
        inside = {p: inside_scan(images[p], fixed) for p in images if p != info.reference}
        identity, _ = fill_outside_scans(identity, inside, info.phases, info.reference, outside_fill)
    for missing, source in (filled or {}).items():
        identity[missing] = identity[source]
    seg = model.predict(stack_phases(identity, info.phases), fixed.GetSpacing(), tta=False)
    mask, found = liver_from_segmentation(seg, fixed, info, min_liver_ml)
    record: dict[str, Any] = {"source": "model", "tta": False, **found}
    if mask is None:
        record.update(mask="body", note=f"the model found {found['liver_ml']:.0f} ml of liver on the unregistered "
                                        f"phases (< {min_liver_ml:g} ml): no liver, registered inside the body "
                                        "mask instead (less accurate)")
        return None, record
    record["mask"] = "liver"
    return mask, record


class ModelFirstPass:
    """``diff4mm_register``'s first pass for unlabelled cases: ``first_pass(images) -> (mask or None, record)``
    with :func:`liver_from_model`, and ``identity`` (the model's checkpoints and the threshold: a retrained
    model re-registers the cases it masked)."""

    def __init__(self, model: Diff4MMModel, phases: Sequence[str], reference: str,
                 min_liver_ml: float = MIN_FIRST_PASS_LIVER_ML):
        info = model.info
        if tuple(phases) != info.phases or reference != info.reference:
            raise InputError(f"{info.folder / 'dataset.json'}: the first-pass model takes the phases "
                             f"{' '.join(info.phases)} (reference {info.reference}), not {' '.join(phases)} "
                             f"(reference {reference}); pass the model's --phases and --reference, or a model "
                             "trained on this phase order")
        self.model = model
        self.min_liver_ml = float(min_liver_ml)
        self.identity = {"model": model_identity(info), "min_liver_ml": self.min_liver_ml}

    @classmethod
    def open(cls, folder, phases: Sequence[str], reference: str, folds=DEFAULT_FOLDS,
             checkpoint: str = DEFAULT_CHECKPOINT, device: str = "auto") -> "ModelFirstPass":
        """Check the model folder (one-line ModelError) and its phase order against the dataset's before any
        case is read; the weights load on the first case that needs them."""
        return cls(Diff4MMModel.open(folder, folds, checkpoint, device, tta=False), phases, reference)

    def __call__(self, images: Mapping[str, sitk.Image]) -> tuple[sitk.Image | None, dict[str, Any]]:
        return liver_from_model(self.model, images, min_liver_ml=self.min_liver_ml)
