"""Stage 1 over a whole input folder: register every phase to the reference phase and write a drop-in nnU-Net
raw dataset.

    $nnUNet_raw/DatasetXXX_NAME/imagesTr/<case>_000k.nii.gz   phase k (phase order) on the reference grid, int16 HU
    $nnUNet_raw/DatasetXXX_NAME/labelsTr/<case>.nii.gz        the input label (already on the reference grid)
    $nnUNet_raw/DatasetXXX_NAME/imagesTs/<case>_000k.nii.gz   unlabelled cases
    $nnUNet_raw/DatasetXXX_NAME/dataset.json                  channel_names all "CT" (nnU-Net's CT normalisation);
                                                              phases and reference under "diff4mm"
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/registration/         settings.json (what made the dataset),
        <case>/<PHASE>.tfm, montage.png, qa.json (written last: the case is finished), summary.csv
The reference grid is kept as it is (no crop): nnU-Net crops and resamples itself, and predictions come back on
the grid the user's reference phase has. Every case is validated before anything is written.
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from .image_io import write_image_atomic
from .inputs import (DEFAULT_PHASES, DEFAULT_REFERENCE, CaseFiles, InputError, _display, _first_line, load_case,
                     read_image, validate_dataset)
from .register import RegistrationSettings, prepare_fixed, register_phase, resample_to_reference

FORMAT_VERSION = 1
QA_SUBFOLDER = Path("diff4mm") / "registration"
LABELS = {"background": 0, "liver": 1, "tumor": 2}
ROOT_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
# What diff4mm_register owns in a dataset folder (besides the imagesTs files of its own cases): --overwrite
# replaces exactly these. nnU-Net trains on every file of imagesTr/labelsTr, so those are replaced whole.
OWN_FOLDERS = ("imagesTr", "labelsTr")
OWN_FILES = ("dataset.json", ".dataset.json.tmp")
# Later stages' outputs inside the dataset folder (every other entry of diff4mm/): made from a registration, kept
# by --overwrite with a warning. Named here for the warning; per-fold variants (normal_fold0, ...) are matched by
# their prefix.
LATER_STAGES = {
    "normal": "normal CTs (diff4mm_inpaint)",
    "inpainter": "inpainter model (diff4mm_train_inpainter)",
    "synthesizer": "synthesis bundle (diff4mm_train_synthesizer)",
}


class DatasetExistsError(InputError):
    """The target dataset folder holds something else (another input, other settings, another dataset)."""


@dataclass(frozen=True)
class Job:
    case: CaseFiles
    dataset_dir: str
    phases: tuple[str, ...]
    reference: str
    settings: dict
    montage: bool


def dataset_folder(nnunet_raw, dataset_id: int, name: str) -> Path:
    return Path(nnunet_raw) / f"Dataset{dataset_id:03d}_{name}"


def nnunet_roots_from_env() -> list[tuple[str, Path]]:
    """(variable, folder) of the nnU-Net roots set in the environment: nnUNet_raw, _preprocessed, _results."""
    return [(var, Path(os.environ[var])) for var in ROOT_VARIABLES if os.environ.get(var)]


def _check_id_free(nnunet_raw: Path, dataset_id: int, name: str,
                   other_roots: Sequence[tuple[str, Path]]) -> None:
    """DatasetExistsError if another DatasetXXX_<other name> with this ID is in any nnU-Net root: nnU-Net finds
    datasets by ID in each root, so a clash in nnUNet_preprocessed or nnUNet_results breaks every later stage."""
    prefix = f"Dataset{dataset_id:03d}_"
    target = dataset_folder(nnunet_raw, dataset_id, name).name
    seen = set()
    for var, root in [("nnU-Net raw folder", Path(nnunet_raw)), *other_roots]:
        key = os.path.abspath(root)
        if key in seen or not Path(root).is_dir():
            continue
        seen.add(key)
        others = sorted(p.name for p in Path(root).glob(f"{prefix}*") if p.is_dir() and p.name != target)
        if others:
            raise DatasetExistsError(f"{Path(root) / others[0]}: dataset ID {dataset_id} is taken by another name "
                                     f"(in {var}); nnU-Net would not know which one to use. Choose another -d")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _clear_own_outputs(target: Path, old_phases: int | None) -> None:
    """Remove what diff4mm_register writes into ``target`` and nothing else: imagesTr, labelsTr, dataset.json,
    diff4mm/registration/, and the imagesTs files of the cases the old registration recorded (``<case>_000k``, k <
    ``old_phases`` if known, and their temporary files). Other files (a user's own test images, later stages'
    outputs) stay; later stages' folders are reported as kept, one warning line each."""
    qa = target / QA_SUBFOLDER
    old_cases = sorted(p.name for p in qa.iterdir() if p.is_dir()) if qa.is_dir() else []
    tests = target / "imagesTs"
    if old_cases and tests.is_dir():
        channel = r"\d{4}" if old_phases is None else "|".join(f"{k:04d}" for k in range(old_phases))
        own = re.compile(r"(\.tmp-[0-9a-f]{32}-)?(" + "|".join(map(re.escape, old_cases)) + r")_(" + channel
                         + r")\.nii\.gz")
        for f in tests.iterdir():
            if own.fullmatch(f.name):
                _remove(f)
        if not any(tests.iterdir()):
            tests.rmdir()
    for entry in (*OWN_FOLDERS, *OWN_FILES, QA_SUBFOLDER):
        _remove(target / entry)
    derived = target / QA_SUBFOLDER.parent
    for entry in sorted(e for e in derived.iterdir() if not e.name.startswith('.')) if derived.is_dir() else []:
        what = next((w for stem, w in LATER_STAGES.items() if entry.name.startswith(stem)), "output of a later stage")
        print(f"warning: {entry}: {what} made from the old registration, kept; delete it and re-run that stage to "
              "rebuild it from the new registration", file=sys.stderr)


def _check_target(nnunet_raw: Path, dataset_id: int, name: str, fingerprint: dict, overwrite: bool) -> Path:
    """The dataset folder to write: new, or made by diff4mm_register with this fingerprint (resume), or, with
    ``overwrite``, cleared of diff4mm_register's own outputs (see :func:`_clear_own_outputs`)."""
    target = dataset_folder(nnunet_raw, dataset_id, name)
    settings_file = target / QA_SUBFOLDER / "settings.json"
    if settings_file.is_file():
        stored = json.loads(settings_file.read_text(encoding="utf-8"))
        if stored != fingerprint:
            changed = next((k for k in fingerprint if stored.get(k) != fingerprint[k]), "format_version")
            if not overwrite:
                raise DatasetExistsError(f"{target}: made from {changed}={stored.get(changed)!r}, not "
                                         f"{fingerprint[changed]!r}; pass --overwrite to replace it, or choose "
                                         "another -d/-n")
            phases = stored.get("phases")
            _clear_own_outputs(target, len(phases) if isinstance(phases, list) else None)
    elif target.exists() and any(target.iterdir()):
        if not overwrite:
            raise DatasetExistsError(f"{target}: exists and was not written by diff4mm_register; pass --overwrite "
                                     "to replace it, or choose another -d/-n")
        _clear_own_outputs(target, None)
    return target


def _register_case(job: Job) -> dict:
    """Register, resample and write one case; returns its QA record."""
    case = job.case
    dataset = Path(job.dataset_dir)
    qa_dir = dataset / QA_SUBFOLDER / case.name
    qa_file = qa_dir / "qa.json"
    if qa_file.is_file():
        return json.loads(qa_file.read_text(encoding="utf-8"))
    split = "imagesTr" if case.is_labelled else "imagesTs"
    written = [dataset / split / f"{case.name}_{k:04d}.nii.gz" for k in range(len(job.phases))]
    if case.is_labelled:
        written.append(dataset / "labelsTr" / f"{case.name}.nii.gz")
    step = [f"the reference phase {job.reference} ({_display(case.phases[job.reference], case.directory.parent)})"]
    try:
        return _register_case_files(job, step)
    except (RuntimeError, ValueError) as err:
        # Validation rejects the inputs known to break registration; anything else ITK or numpy raises still
        # ends as one line naming the case, and the case's partial outputs are removed (a re-run redoes it).
        for path in written:
            path.unlink(missing_ok=True)
        shutil.rmtree(qa_dir, ignore_errors=True)
        if isinstance(err, InputError):
            raise
        root = case.directory.parent
        reason = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", _first_line(err)).rstrip(".")  # ITK's object address
        raise InputError(f"{case.name}: registration failed at {step[0]}: {reason}; check the case's "
                         f"files ({_display(case.directory, root)}) with diff4mm_montage, or leave the case out"
                         ) from None


def _register_case_files(job: Job, step: list[str]) -> dict:
    """:func:`_register_case`'s work; ``step[0]`` says what is being done, for its error message."""
    case = job.case
    dataset = Path(job.dataset_dir)
    qa_dir = dataset / QA_SUBFOLDER / case.name
    qa_file = qa_dir / "qa.json"
    settings = RegistrationSettings.from_json(job.settings)
    images, label = load_case(case)
    fixed = images[job.reference]
    root = case.directory.parent
    masks = {p: read_image(f, name=_display(f, root)) for p, f in case.liver_masks.items()}
    setup = prepare_fixed(fixed, label if label is not None else masks.get(job.reference), settings)
    split = "imagesTr" if label is not None else "imagesTs"
    qa_dir.mkdir(parents=True, exist_ok=True)
    (dataset / split).mkdir(parents=True, exist_ok=True)
    record = {"case": case.name, "split": split, "mask": setup.mask_kind, "phases": {}}
    registered = {}
    for k, phase in enumerate(job.phases):
        step[0] = f"phase {phase} ({_display(case.phases[phase], root)})"
        if phase == job.reference:
            out = resample_to_reference(images[phase], fixed)
            record["phases"][phase] = {"reference": True}
        else:
            result = register_phase(setup, images[phase], masks.get(phase), settings)
            sitk.WriteTransform(result.transform, str(qa_dir / f".{phase}.tfm.tmp.tfm"))
            os.replace(qa_dir / f".{phase}.tfm.tmp.tfm", qa_dir / f"{phase}.tfm")
            out = resample_to_reference(images[phase], fixed, result.transform)
            record["phases"][phase] = result.qa
        registered[phase] = out
        write_image_atomic(out, dataset / split / f"{case.name}_{k:04d}.nii.gz")
    if label is not None:
        (dataset / "labelsTr").mkdir(parents=True, exist_ok=True)
        write_image_atomic(label, dataset / "labelsTr" / f"{case.name}.nii.gz")
    step[0] = "the QA montage"
    if job.montage:
        from nnunetv2_diff4mm.visualization import montage  # QA only; registration itself never needs it

        montage(registered, label, qa_dir / "montage.png", title=f"{case.name}: registered to {job.reference}")
    tmp = qa_dir / ".qa.json.tmp"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, qa_file)
    return record


def _init_worker() -> None:
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)


def _summary_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        for phase, qa in r["phases"].items():
            if qa.get("reference"):
                continue
            row = {"case": r["case"], "phase": phase, "mask": r["mask"], "seconds": qa.get("seconds"),
                   "metric_initial": qa.get("metric_initial"), "metric_final": qa.get("metric_final"),
                   "displacement_mean_mm": qa.get("displacement_mean_mm")}
            for stage in qa.get("stages", [])[1:]:
                row[f"{stage['stage']}_metric"] = stage.get("metric_after")
            rows.append(row)
    return rows


def write_registered_dataset(input_dir, dataset_id: int, name: str, nnunet_raw, phases=DEFAULT_PHASES,
                             reference: str = DEFAULT_REFERENCE, num_processes: int = 1, overwrite: bool = False,
                             settings: RegistrationSettings = RegistrationSettings(), montages: bool = True,
                             progress: bool = True, other_roots: Sequence[tuple[str, Path]] = ()) -> Path:
    """Validate, register and write the whole dataset (resumable); returns the dataset folder.

    ``other_roots``: (name, folder) of further nnU-Net roots (nnUNet_preprocessed, nnUNet_results; see
    :func:`nnunet_roots_from_env`) in which the dataset ID must not belong to another dataset name.
    ``overwrite`` replaces only this stage's outputs of an existing dataset (see :func:`_clear_own_outputs`).
    """
    from tqdm import tqdm

    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset ID must be 1..999 (nnU-Net's DatasetXXX naming), got {dataset_id}")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise InputError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    nnunet_raw = Path(nnunet_raw)
    _check_id_free(nnunet_raw, dataset_id, name, other_roots)  # cheap, read-only: before reading every case
    cases = validate_dataset(input_dir, phases, reference, num_processes,  # fails before anything is written
                             body_threshold_hu=settings.body_threshold_hu)
    fingerprint = {"format_version": FORMAT_VERSION, "input": str(Path(input_dir).resolve()),
                   "phases": list(phases), "reference": reference, "settings": settings.to_json()}
    target = _check_target(nnunet_raw, dataset_id, name, fingerprint, overwrite)
    (target / QA_SUBFOLDER).mkdir(parents=True, exist_ok=True)
    settings_file = target / QA_SUBFOLDER / "settings.json"
    if not settings_file.is_file():
        settings_file.write_text(json.dumps(fingerprint, indent=1), encoding="utf-8")
    jobs = [Job(c, str(target), tuple(phases), reference, fingerprint["settings"], montages) for c in cases]
    records = []
    bar = tqdm(total=len(jobs), desc="registering cases", unit="case", disable=not progress)
    if num_processes > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(num_processes, initializer=_init_worker) as pool:
            for record in pool.imap(_register_case, jobs):
                records.append(record)
                bar.update()
    else:
        for job in jobs:
            records.append(_register_case(job))
            bar.update()
    bar.close()
    labelled = [c for c in cases if c.is_labelled]
    dataset_json = {
        "name": name,
        "description": f"Multi-phase liver CT registered to {reference} by diff4mm_register",
        "channel_names": {str(k): "CT" for k in range(len(phases))},
        "labels": LABELS,
        "numTraining": len(labelled),
        "file_ending": ".nii.gz",
        "diff4mm": {"phases": list(phases), "reference": reference, "format_version": FORMAT_VERSION},
    }
    tmp = target / ".dataset.json.tmp"
    tmp.write_text(json.dumps(dataset_json, indent=1), encoding="utf-8")
    os.replace(tmp, target / "dataset.json")
    rows = _summary_rows(records)
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with open(target / QA_SUBFOLDER / "summary.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    return target
