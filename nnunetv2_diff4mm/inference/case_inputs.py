"""The cases ``diff4mm_predict`` segments: the project's multi-phase input layout, phases in the model's order.

Same layout, reader and validation as ``diff4mm_validate`` / ``diff4mm_register`` (registration/inputs.py), with
one difference: a phase may be missing when the caller allows it (``fill_missing``). A missing phase is then
replaced by the registered copy of the available phase nearest to it in the model's channel order, which is the
order of acquisition after contrast injection (NC, AP, PVP, DELAY): DELAY -> PVP, NC -> AP, AP -> PVP (a tie
between NC and PVP goes to the later, contrast-enhanced phase). The paper fills a missing phase by duplicating
an available one; which one it takes is not said, so the nearest in time is the documented choice
(docs/decisions.md, "Inference"). The reference phase can never be filled: the segmentation is written on its
grid.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from registration.field_of_view import nearest_phases
from registration.inputs import (IMAGE_EXTENSIONS, LABEL_STEM, LIVER_MASK_SUFFIX, NON_CASE_FOLDERS, CaseFiles,
                                 InputError, _check_phase_options, _find_entry, _missing_phase_message)


@dataclass(frozen=True)
class PredictionCase:
    """A case to segment: its files (only the phases present) and the phases filled from others."""

    files: CaseFiles
    filled: dict[str, str] = field(default_factory=dict)  # missing phase -> the phase whose copy replaces it

    @property
    def name(self) -> str:
        return self.files.name


def fill_source(missing: str, phases: Sequence[str], available: Sequence[str]) -> str:
    """The available phase that replaces ``missing``: nearest in ``phases`` (channel = acquisition order), ties
    to the later phase."""
    candidates = nearest_phases(missing, phases, available)
    if not candidates:
        raise InputError(f"no phase available to fill {missing}")
    return candidates[0]


def _resolve_missing(name: str, directory: Path | None, phases: Sequence[str], reference: str,
                     present: Mapping[str, Path], fill_missing: bool) -> dict[str, str]:
    missing = [p for p in phases if p not in present]
    if reference in missing:
        where = _missing_phase_message(directory, reference) if directory is not None else \
            f"{name}: missing phase {reference}"
        raise InputError(f"{where}; it is the reference phase the segmentation is written on, so it cannot be "
                         "filled from another phase")
    if missing and not fill_missing:
        first = missing[0]
        where = _missing_phase_message(directory, first) if directory is not None else \
            f"{name}: missing phase {first}"
        source = fill_source(first, phases, list(present))
        raise InputError(f"{where}; or pass --fill-missing-phases to use a copy of {source} instead")
    return {p: fill_source(p, phases, list(present)) for p in missing}


def case_from_folder(case_dir: str | os.PathLike, phases: Sequence[str], reference: str,
                     fill_missing: bool = False, input_root: Path | None = None) -> PredictionCase:
    """One case folder (``<PHASE>.nii.gz`` or DICOM folder ``<PHASE>/`` per phase, optional liver masks)."""
    case_dir = Path(case_dir)
    root = Path(input_root) if input_root is not None else case_dir.parent
    if not case_dir.is_dir():
        raise InputError(f"{case_dir}: case folder does not exist")
    present: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for phase in phases:
        path = _find_entry(case_dir, phase, root)
        if path is not None:
            present[phase] = path
            mask = _find_entry(case_dir, phase + LIVER_MASK_SUFFIX, root)
            if mask is not None:
                masks[phase] = mask
    filled = _resolve_missing(case_dir.name, case_dir, phases, reference, present, fill_missing)
    label = _find_entry(case_dir, LABEL_STEM, root)
    return PredictionCase(CaseFiles(case_dir.name, case_dir, present, label, masks), filled)


def case_from_phase_files(phase_files: Mapping[str, str | os.PathLike], phases: Sequence[str], reference: str,
                          fill_missing: bool = False, name: str | None = None) -> PredictionCase:
    """A case given as {phase: image file or DICOM folder} (a notebook's or service's call); its name is
    ``name`` or the reference file's folder name."""
    unknown = sorted(set(phase_files) - set(phases))
    if unknown:
        raise InputError(f"phases {', '.join(unknown)} are not the model's phases ({' '.join(phases)})")
    present = {p: Path(phase_files[p]) for p in phases if p in phase_files}
    ref = present.get(reference)
    case_name = name or (ref.parent.name if ref is not None else "case")
    filled = _resolve_missing(case_name, None, phases, reference, present, fill_missing)
    for phase, path in present.items():
        if not path.exists():
            raise InputError(f"{path}: phase {phase} of {case_name} does not exist")
    directory = ref.parent if ref is not None else Path(".")
    return PredictionCase(CaseFiles(case_name, directory, present), filled)


def find_prediction_cases(input_dir: str | os.PathLike, phases: Sequence[str], reference: str,
                          fill_missing: bool = False) -> list[PredictionCase]:
    """Every case folder of ``input_dir`` in name order (hidden folders and ``ground_truth`` skipped), or
    ``input_dir`` itself when it is one case folder (holds a reference phase file)."""
    root = Path(input_dir)
    _check_phase_options(tuple(phases), reference)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise InputError(f"{root}: input folder {what}; pass the folder that holds one sub-folder per case")
    if _find_entry(root, reference, root.parent) is not None:
        return [case_from_folder(root, phases, reference, fill_missing, root.parent)]
    case_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name not in NON_CASE_FOLDERS), key=lambda p: p.name)
    if not case_dirs:
        raise InputError(f"{root}: no case folders found; expected one sub-folder per case, e.g. "
                         f"{root / 'case_001' / (reference + IMAGE_EXTENSIONS[0])}")
    return [case_from_folder(d, phases, reference, fill_missing, root) for d in case_dirs]
