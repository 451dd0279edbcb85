"""Stage 1 over a whole input folder: register every phase to the reference phase and write a drop-in nnU-Net
raw dataset.

    $nnUNet_raw/DatasetXXX_NAME/imagesTr/<case>_000k.nii.gz   phase k (phase order) on the reference grid, int16 HU
    $nnUNet_raw/DatasetXXX_NAME/labelsTr/<case>.nii.gz        the input label (already on the reference grid)
    $nnUNet_raw/DatasetXXX_NAME/imagesTs/<case>_000k.nii.gz   unlabelled cases
    $nnUNet_raw/DatasetXXX_NAME/dataset.json                  channel_names all "CT" (nnU-Net's CT normalisation);
                                                              phases and reference under "diff4mm"
    $nnUNet_raw/DatasetXXX_NAME/diff4mm/registration/         settings.json (what made the dataset),
        <case>/<PHASE>.tfm, montage.png, qa.json (written last: the case is finished), summary.csv,
        <case>/first_pass_liver.nii.gz (an unlabelled case's liver from ``first_pass``, if one was given)
    $nnUNet_raw/DatasetXXX_NAME/.diff4mm_register.lock        while a run writes the dataset (pid, host)
The reference grid is kept as it is (no crop): nnU-Net crops and resamples itself, and predictions come back on
the grid the user's reference phase has. Every case is validated before anything is written.

Resuming is keyed on content: a case's qa.json records the sha256 of every input file it was made from and the
settings (``input_key``); a re-run registers again exactly the cases whose inputs changed (moving a case between
imagesTs and imagesTr when its label appeared or went), removes the outputs of cases gone from the input, and
rewrites dataset.json. Every registered phase is checked for plausibility (:func:`flag_reasons`); flagged phases
are listed in qa.json and summary.csv and stop the stage (:class:`RegistrationFlaggedError`) unless allowed.

An unlabelled case (imagesTs) is registered inside its ``<REF>_liver`` mask if its folder has one, else inside
the liver a ``first_pass`` callable finds (the plugin's trained model, ``diff4mm_register --first-pass-model``),
else inside the body mask. The first pass runs in this process before the workers start (one model, loaded
once); what it is made from (``first_pass.identity``) is part of the case's resume key, so adding or retraining
the model re-registers exactly the unlabelled cases it masks.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import SimpleITK as sitk

from .image_io import write_image_atomic, write_json_atomic, write_text_atomic
from .inputs import (DEFAULT_PHASES, DEFAULT_REFERENCE, CaseFiles, InputError, _display, _first_line,
                     case_input_digests, load_case, read_image, validate_dataset)
from .register import RegistrationSettings, prepare_fixed, register_phase, resample_to_reference

FORMAT_VERSION = 1
QA_SUBFOLDER = Path("diff4mm") / "registration"
LABELS = {"background": 0, "liver": 1, "tumor": 2}
ROOT_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
# What diff4mm_register owns in a dataset folder (besides the imagesTs files of its own cases): --overwrite
# replaces exactly these. nnU-Net trains on every file of imagesTr/labelsTr, so those are replaced whole.
OWN_FOLDERS = ("imagesTr", "labelsTr")
OWN_FILES = ("dataset.json",)
OWN_TEMP_FILES = re.compile(r"\.dataset\.json\.[0-9a-f]{32}\.tmp")  # a run killed while writing dataset.json
LOCK_NAME = ".diff4mm_register.lock"
FIRST_PASS_MASK = "first_pass_liver.nii.gz"  # in an unlabelled case's QA folder (see _with_first_pass)
# Registration QA (measured on phantom cases, docs/decisions.md): a phase is flagged when its final similarity
# to the reference (register.similarity: Mattes MI over the reference's MI with itself, in the metric mask) is
# below MIN_SIMILARITY, or below MIN_RELATIVE_SIMILARITY x that of the case's most similar phase, or when less
# than MIN_REGION_INSIDE of the reference liver maps inside the phase's scan. Registered phantom phases (55, 4
# configurations): similarity 0.51-0.83, >= 0.74 x the case's best, inside fraction >= 0.986. Phases whose
# header origin is 100-200 mm off: similarity 0.00-0.23 (MAE ~1000 HU); 50-100 mm off and only partly recovered
# (MAE 43-132 HU, registered phases 9-19 HU): 0.42-0.45, 0.53-0.57 x the case's best.
MIN_SIMILARITY = 0.3
MIN_RELATIVE_SIMILARITY = 0.65
MIN_REGION_INSIDE = 0.5
FLAGGED_EXIT_CODE = 3
# Later stages' outputs (every other entry of diff4mm/ in the dataset folder, and of DATASET/diff4mm/ under
# $nnUNet_results, where the trained models go): made from a registration, kept by --overwrite with a warning.
# Named here for the warning; per-fold variants (normal_fold0, ...) are matched by their prefix.
LATER_STAGES = {
    "normal": "normal CTs (diff4mm_inpaint)",
    "inpainter": "inpainter model (diff4mm_train_inpainter)",
    "synthesizer": "synthesis bundle (diff4mm_train_synthesizer)",
}


class DatasetExistsError(InputError):
    """The target dataset folder holds something else (another input, other settings, another dataset)."""


class DatasetLockedError(InputError):
    """Another diff4mm_register run is writing this dataset (its lock file is held)."""


class RegistrationFlaggedError(Exception):
    """Some registered phases are implausible (see :func:`flag_reasons`); everything but dataset.json was
    written. ``flagged``: {case: [reason, ...]}."""

    def __init__(self, message: str, flagged: dict[str, list[str]]):
        super().__init__(message)
        self.flagged = flagged


@dataclass(frozen=True)
class Job:
    case: CaseFiles
    dataset_dir: str
    phases: tuple[str, ...]
    reference: str
    settings: dict
    # montage_fn(registered phases, label, path, title=..., before=phases as read, region=the registration mask of
    # an unlabelled case or None, region_kind="liver"/"body", reference=phase) draws the QA PNG; None: none
    montage_fn: Callable | None
    inputs: dict | None = None  # case_input_digests of the case
    input_key: str | None = None  # what the case's outputs are made from (see _input_key)
    first_pass: dict | None = None  # the first pass's record of an unlabelled case (its mask is in liver_masks)


class FirstPass(Protocol):
    """What ``write_registered_dataset`` calls for an unlabelled case without a ``<REF>_liver`` mask."""

    identity: dict  # JSON: what its masks are made from (part of the resume key of the cases it masks)

    def __call__(self, images: Mapping[str, sitk.Image]) -> tuple[sitk.Image | None, dict]:
        """(the liver on the reference phase's grid, or None: no liver, use the body mask; a JSON record with
        at least ``mask``: "liver" or "body")."""




# ------------------------------------------------------------------------------------------------ lock


def _lock_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    if not data.strip():
        return None  # just created
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        holder = None
    return holder if isinstance(holder, dict) else {"pid": "?", "host": "?"}


@dataclass(frozen=True)
class LockOwner:
    """Who takes a folder lock, for its file name and messages (diff4mm_register by default)."""

    command: str = "diff4mm_register"
    what: str = "this dataset"
    other_choice: str = "choose another -d/-n"
    shard: str | None = None  # Shard.tag: shards of one run each hold their own lock

    @property
    def file_name(self) -> str:
        base = LOCK_NAME if self.command == "diff4mm_register" else f".{self.command}.lock"
        return base if self.shard is None else f"{base[:-len('.lock')]}.{self.shard}.lock"


REGISTER_LOCK = LockOwner()


def _held_message(path: Path, holder: dict | None, owner: LockOwner = REGISTER_LOCK) -> str:
    holder = holder or {}
    since = f" since {holder['started']}" if holder.get("started") else ""
    return (f"{path}: held by pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}: another "
            f"{owner.command} is writing {owner.what}; wait for it to finish, or {owner.other_choice}")


def check_unlocked(folder: Path, name: str = LOCK_NAME) -> None:
    """DatasetLockedError if a run holds ``folder``'s lock ``name`` now (read-only: creates nothing)."""
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        raise DatasetLockedError(_held_message(path, holder)) from None
    finally:
        os.close(fd)


SHARD_LOCKS = re.compile(re.escape(LOCK_NAME[:-len(".lock")]) + r"\.shard-\d+-of-\d+\.lock")


def check_no_shard_runs(folder: Path) -> None:
    """DatasetLockedError if a ``--shard`` run of diff4mm_register holds its lock in ``folder`` now."""
    folder = Path(folder)
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if SHARD_LOCKS.fullmatch(entry.name):
            check_unlocked(folder, entry.name)


@contextmanager
def dataset_lock(folder: Path, owner: LockOwner = REGISTER_LOCK) -> Iterator[Path]:
    """Hold ``folder/.diff4mm_register.lock`` (``owner.file_name``; created with ``folder`` if needed) for the block.

    The lock is fcntl.flock on that file, which the kernel releases when its holder dies; the file holds the
    holder's pid, host and start time for messages. Held by another process: DatasetLockedError naming the file
    and the pid. Left behind by a run on this host that died (not locked, still filled in): taken over with a
    warning. Left by a run on another host (flock may not reach across machines): refused, the message says to
    delete it if nothing runs there. On leaving, the file is removed, and ``folder`` too if this created it and
    it is empty.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / owner.file_name
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise DatasetLockedError(_held_message(path, holder, owner)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and flock: lock the new one
    try:
        previous = _lock_holder(fd)
        if previous is not None:
            if previous.get("host") != host:
                raise DatasetLockedError(
                    f"{path}: left by pid {previous.get('pid', '?')} on host {previous.get('host', '?')}, another "
                    f"machine, so whether that run still writes {owner.what} cannot be told from here; delete the "
                    f"lock file if no {owner.command} runs there")
            print(f"warning: {path}: stale lock of pid {previous.get('pid', '?')} on this host (that run ended "
                  "without releasing it), taken over", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": host,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode("utf-8"))
        yield path
    finally:
        try:
            if os.fstat(fd).st_size and _lock_holder(fd).get("pid") == os.getpid():
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        if created:
            try:
                folder.rmdir()  # only if empty: nothing was written
            except OSError:
                pass


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
    for entry in target.iterdir():
        if OWN_TEMP_FILES.fullmatch(entry.name):
            _remove(entry)
    # later stages write normal CTs here and their trained models into nnUNet_results (same DATASET/diff4mm/)
    results = [root for var, root in nnunet_roots_from_env() if var == "nnUNet_results"]
    for derived in (target / QA_SUBFOLDER.parent, *(root / target.name / QA_SUBFOLDER.parent for root in results)):
        for entry in sorted(e for e in derived.iterdir() if not e.name.startswith('.')) if derived.is_dir() else []:
            what = next((w for stem, w in LATER_STAGES.items() if entry.name.startswith(stem)),
                        "output of a later stage")
            print(f"warning: {entry}: {what} made from the old registration, kept; delete it and re-run that stage "
                  "to rebuild it from the new registration", file=sys.stderr)


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
    elif target.exists() and any(not _own_scaffold(p) for p in target.iterdir()):
        if not overwrite:
            raise DatasetExistsError(f"{target}: exists and was not written by diff4mm_register; pass --overwrite "
                                     "to replace it, or choose another -d/-n")
        _clear_own_outputs(target, None)
    return target


def _own_scaffold(entry: Path) -> bool:
    """What a run (or a concurrent shard) of diff4mm_register makes before settings.json exists: its lock
    files and the empty QA folder."""
    if entry.name == LOCK_NAME or SHARD_LOCKS.fullmatch(entry.name):
        return True
    if entry.name == QA_SUBFOLDER.parts[0] and entry.is_dir():
        return all(p.name == QA_SUBFOLDER.parts[1] and p.is_dir() and not any(p.iterdir()) for p in entry.iterdir())
    return False


def flag_reasons(record: dict) -> list[str]:
    """Why the registered phases of a case's QA record are implausible, one "PHASE: reason" each (empty: none).

    A phase is flagged when its similarity to the reference (register.similarity) is below MIN_SIMILARITY, or
    below MIN_RELATIVE_SIMILARITY times the case's most similar phase (phases of one examination register about
    equally well), or less than MIN_REGION_INSIDE of the reference's liver (or body) region maps inside its
    scan: registration did not find the liver (e.g. a header origin far off), the phase's output is not aligned."""
    reasons = []
    moving = {p: qa for p, qa in record.get("phases", {}).items() if not qa.get("reference")}
    known = [qa["similarity"] for qa in moving.values() if qa.get("similarity") is not None]
    best = max(known) if len(known) > 1 else None
    for phase, qa in moving.items():
        why = []
        similarity = qa.get("similarity")
        if similarity is not None and similarity < MIN_SIMILARITY:
            why.append(f"similarity to the reference {similarity:.2f} < {MIN_SIMILARITY}")
        elif similarity is not None and best is not None and similarity < MIN_RELATIVE_SIMILARITY * best:
            why.append(f"similarity to the reference {similarity:.2f} < {MIN_RELATIVE_SIMILARITY} x "
                       f"{best:.2f} of the case's best phase")
        inside = qa.get("region_inside_fraction")
        if inside is not None and inside < MIN_REGION_INSIDE:
            why.append(f"only {100 * inside:.0f} % of the reference {record.get('mask', 'liver')} region maps "
                       f"inside the phase's scan (< {100 * MIN_REGION_INSIDE:.0f} %)")
        if why:
            reasons.append(f"{phase}: " + " and ".join(why))
    return reasons


def _input_key(inputs: dict[str, str], fingerprint: dict, labelled: bool, first_pass: dict | None = None) -> str:
    """What a case's outputs are made from: its input files' content, everything in the dataset fingerprint
    that changes a registration (not the input folder's path), and the identity of the first pass that masks it
    (absent when none does, so the keys of datasets registered without one stay valid)."""
    made_from = {"inputs": inputs, "labelled": labelled,
                 **{k: v for k, v in fingerprint.items() if k != "input"}}
    if first_pass is not None:
        made_from["first_pass"] = first_pass
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode("utf-8")).hexdigest()


def _case_outputs(dataset: Path, case: str, phases: int) -> list[Path]:
    """Every file diff4mm_register may have written for ``case``, in either split (temporary files included),
    and its QA folder."""
    out = [dataset / QA_SUBFOLDER / case, dataset / "labelsTr" / f"{case}.nii.gz"]
    names = [f"{case}_{k:04d}.nii.gz" for k in range(phases)]
    for split in ("imagesTr", "imagesTs"):
        out += [dataset / split / n for n in names]
    for folder, pattern in (("imagesTr", r"_\d{4}"), ("imagesTs", r"_\d{4}"), ("labelsTr", "")):
        tmp = re.compile(r"\.tmp-[0-9a-f]{32}-" + re.escape(case) + pattern + r"\.nii\.gz")
        if (dataset / folder).is_dir():
            out += [f for f in (dataset / folder).iterdir() if tmp.fullmatch(f.name)]
    return out


def _remove_case_outputs(dataset: Path, case: str, phases: int) -> None:
    for path in _case_outputs(dataset, case, phases):
        _remove(path)


def _load_record(qa_file: Path) -> dict | None:
    try:
        record = json.loads(qa_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _changed(old: dict | None, new: dict) -> str:
    """The input files that differ between two case_input_digests, for a message."""
    if not isinstance(old, dict):
        return ""
    names = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    return f" ({', '.join(names)})" if names else ""


def _register_case(job: Job) -> dict:
    """Register, resample and write one case; returns its QA record."""
    case = job.case
    dataset = Path(job.dataset_dir)
    qa_dir = dataset / QA_SUBFOLDER / case.name
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
    if job.first_pass is not None:
        record["first_pass"] = job.first_pass
    registered = {}
    for k, phase in enumerate(job.phases):
        step[0] = f"phase {phase} ({_display(case.phases[phase], root)})"
        if phase == job.reference:
            out = resample_to_reference(images[phase], fixed)
            record["phases"][phase] = {"reference": True}
        else:
            result = register_phase(setup, images[phase], masks.get(phase), settings)
            tmp = qa_dir / f".{phase}.{uuid.uuid4().hex}.tmp.tfm"  # ITK picks the writer by the extension
            try:
                sitk.WriteTransform(result.transform, str(tmp))
                os.replace(tmp, qa_dir / f"{phase}.tfm")
            finally:
                tmp.unlink(missing_ok=True)
            out = resample_to_reference(images[phase], fixed, result.transform)
            record["phases"][phase] = result.qa
        registered[phase] = out
        write_image_atomic(out, dataset / split / f"{case.name}_{k:04d}.nii.gz")
    if label is not None:
        (dataset / "labelsTr").mkdir(parents=True, exist_ok=True)
        write_image_atomic(label, dataset / "labelsTr" / f"{case.name}.nii.gz")
    step[0] = "the QA montage"
    if job.montage_fn is not None:
        job.montage_fn(registered, label, qa_dir / "montage.png", title=f"{case.name}: registered to {job.reference}",
                       before=images, region=None if label is not None else setup.region, region_kind=setup.mask_kind,
                       reference=job.reference)
    record["flagged"] = flag_reasons(record)
    record["inputs"] = job.inputs
    record["input_key"] = job.input_key
    write_json_atomic(qa_file, record)
    return record


def _with_first_pass(jobs: list[Job], first_pass: FirstPass, qa_root: Path, progress: bool, tqdm) -> list[Job]:
    """The jobs, each unlabelled case without a reference liver mask given the liver ``first_pass`` finds (in this
    process, before the workers start: the model loads once). A case without a liver is registered inside the
    body mask, with one warning line."""
    todo = [k for k, job in enumerate(jobs) if not job.case.is_labelled and job.reference not in job.case.liver_masks]
    out = list(jobs)
    for k in tqdm(todo, desc="first-pass liver", unit="case", disable=not progress or not todo, leave=False):
        job = out[k]
        case = job.case
        images, _ = load_case(case)
        try:
            mask, record = first_pass(images)
        except (RuntimeError, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{case.name}: the first-pass liver failed: {_first_line(err)}; register without "
                             "--first-pass-model, or put a <REF>_liver mask in the case folder") from None
        if mask is None:
            tqdm.write(f"warning: {case.name}: {record.get('note', 'the first pass found no liver')}", file=sys.stderr)
            out[k] = replace(job, first_pass=record)
            continue
        path = qa_root / case.name / FIRST_PASS_MASK
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image_atomic(sitk.Cast(mask > 0, sitk.sitkUInt8), path)
        record["file"] = path.name
        out[k] = replace(job, case=replace(case, liver_masks={**case.liver_masks, job.reference: path}),
                         first_pass=record)
    return out


def _init_worker() -> None:
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)


def _summary_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        flagged = {reason.split(":", 1)[0]: reason.split(": ", 1)[1] for reason in r.get("flagged", [])}
        for phase, qa in r["phases"].items():
            if qa.get("reference"):
                continue
            row = {"case": r["case"], "phase": phase, "mask": r["mask"], "seconds": qa.get("seconds"),
                   "metric_initial": qa.get("metric_initial"), "metric_final": qa.get("metric_final"),
                   "similarity": qa.get("similarity"), "region_inside_fraction": qa.get("region_inside_fraction"),
                   "displacement_mean_mm": qa.get("displacement_mean_mm"), "flagged": flagged.get(phase, "")}
            if "first_pass" in r:
                row["first_pass_liver_ml"] = r["first_pass"].get("liver_ml")
            for stage in qa.get("stages", [])[1:]:
                row[f"{stage['stage']}_metric"] = stage.get("metric_after")
            rows.append(row)
    return rows


def write_registered_dataset(input_dir, dataset_id: int, name: str, nnunet_raw, phases=DEFAULT_PHASES,
                             reference: str = DEFAULT_REFERENCE, num_processes: int = 1, overwrite: bool = False,
                             settings: RegistrationSettings = RegistrationSettings(),
                             montage_fn: Callable | None = None,
                             progress: bool = True, other_roots: Sequence[tuple[str, Path]] = (),
                             allow_failed: bool = False, shard=None, first_pass: FirstPass | None = None) -> Path:
    """Validate, register and write the whole dataset (resumable); returns the dataset folder.

    ``other_roots``: (name, folder) of further nnU-Net roots (nnUNet_preprocessed, nnUNet_results; see
    :func:`nnunet_roots_from_env`) in which the dataset ID must not belong to another dataset name.
    ``montage_fn(phases, label, path, title=..., before=..., region=..., region_kind=..., reference=...)``, a
    module-level function (it goes to the worker processes), draws each case's QA PNG before and after
    registration (the CLI passes nnunetv2_diff4mm.visualization.registration_montage); None draws none.
    ``overwrite`` replaces only this stage's outputs of an existing dataset (see :func:`_clear_own_outputs`).
    A re-run redoes the cases whose input content changed and removes those gone from the input, one line on
    stdout per such action. The dataset folder is locked for the run (:func:`dataset_lock`). Phases whose
    registration is implausible (:func:`flag_reasons`) get one warning line each on stderr; then, unless
    ``allow_failed``, RegistrationFlaggedError is raised after every case and QA file is written but before
    dataset.json (an existing one is removed), so nnU-Net cannot plan on a dataset with misaligned phases.

    ``shard`` (registration.sharding.Shard): validate and register only that part of the cases, into the same
    dataset folder as the other shards (running at the same time, on any machine that sees the folder). A shard
    holds its own lock, removes no other case's outputs and writes neither summary.csv nor dataset.json (it
    removes an existing dataset.json when it registers anything: the dataset is incomplete until then). The
    final step is the same command without ``shard``: it registers whatever is still missing, names it, and
    writes summary.csv and dataset.json. ``overwrite`` cannot be combined with a shard (it would clear the other
    shards' work).

    ``first_pass`` (:class:`FirstPass`): finds the liver of every unlabelled case that has no ``<REF>_liver``
    mask of its own, so it is registered inside that liver instead of the body mask; the mask goes to the case's
    QA folder (``first_pass_liver.nii.gz``) and its record into qa.json (``first_pass``).
    """
    from tqdm import tqdm

    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset ID must be 1..999 (nnU-Net's DatasetXXX naming), got {dataset_id}")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise InputError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    if shard is not None and overwrite:
        raise InputError(f"--overwrite with --shard {shard}: clearing the dataset would delete the other shards' "
                         "work; run the --overwrite once without --shard (or delete the dataset), then the shards")
    nnunet_raw = Path(nnunet_raw)
    folder = dataset_folder(nnunet_raw, dataset_id, name)
    _check_id_free(nnunet_raw, dataset_id, name, other_roots)  # cheap, read-only: before reading every case
    check_unlocked(folder)  # a run is writing it: say so before validating
    if shard is None:
        check_no_shard_runs(folder)
    cases = validate_dataset(input_dir, phases, reference, num_processes,  # fails before anything is written
                             body_threshold_hu=settings.body_threshold_hu, shard=shard)
    fingerprint = {"format_version": FORMAT_VERSION, "input": str(Path(input_dir).resolve()),
                   "phases": list(phases), "reference": reference, "settings": settings.to_json()}
    owner = REGISTER_LOCK if shard is None else LockOwner(shard=shard.tag, what=f"shard {shard} of this dataset")
    with dataset_lock(folder, owner):
        if shard is not None:
            check_unlocked(folder)  # an unsharded run started meanwhile
        else:
            check_no_shard_runs(folder)
        # Under the lock: another run may have made a DatasetXXX_<other name> since the check above.
        _check_id_free(nnunet_raw, dataset_id, name, other_roots)
        target = _check_target(nnunet_raw, dataset_id, name, fingerprint, overwrite)
        return _write_locked(target, cases, name, fingerprint, num_processes, montage_fn, progress, allow_failed,
                             tqdm, shard, first_pass)


def run_summary(summary_csv: Path) -> str | None:
    """One line for the end of a run, from its summary.csv: the median and the worst final similarity (the final
    Mattes MI relative to the reference's own, 1 = as similar as the reference to itself; comparable between
    cases) over every registered phase, with the worst's case and phase, and the number flagged. None without a
    summary (a shard, or no moving phase)."""
    summary_csv = Path(summary_csv)
    if not summary_csv.is_file():
        return None
    with open(summary_csv, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("similarity") not in (None, "", "None")]
    if not rows:
        return None
    values = [float(r["similarity"]) for r in rows]
    worst = rows[values.index(min(values))]
    flagged = sum(1 for r in rows if r.get("flagged"))
    return (f"registration QA of {len(rows)} phases: final similarity median {statistics.median(values):.2f}, worst "
            f"{min(values):.2f} ({worst['case']} {worst['phase']}); {flagged} flagged (1 = as similar as the "
            f"reference phase to itself; per phase in {summary_csv})")


def _report_flagged(records: list[dict], qa_root: Path, summary: Path | None, allow_failed: bool, target: Path
                    ) -> None:
    """One warning line per flagged phase; then, unless ``allow_failed``, RegistrationFlaggedError (after removing
    dataset.json: nnU-Net must not plan on misaligned phases). ``summary``: the run's summary.csv (None for a
    shard, which writes none: each case's qa.json says it)."""
    flagged = {r["case"]: r["flagged"] for r in records if r.get("flagged")}
    for case, reasons in flagged.items():
        for reason in reasons:
            montage = qa_root / case / "montage.png"
            listing = summary or qa_root / case / "qa.json"
            see = f"{montage} and {listing}" if montage.is_file() else str(listing)
            print(f"warning: {case} {reason}: registration failed, the phase is not aligned; see {see}",
                  file=sys.stderr)
    if flagged and not allow_failed:
        (target / "dataset.json").unlink(missing_ok=True)
        n = sum(len(v) for v in flagged.values())
        raise RegistrationFlaggedError(
            f"{n} phase{'s' * (n != 1)} of {len(flagged)} case{'s' * (len(flagged) != 1)} "
            f"({', '.join(flagged)}) failed the registration QA (listed above and in {summary or 'their qa.json'}); "
            "dataset.json not written: fix or leave out those cases and re-run (only they are redone), or pass "
            "--allow-failed to write the dataset with them", flagged)


def _write_locked(target: Path, cases: list[CaseFiles], name: str, fingerprint: dict, num_processes: int,
                  montage_fn: Callable | None, progress: bool, allow_failed: bool, tqdm, shard=None,
                  first_pass: FirstPass | None = None) -> Path:
    """:func:`write_registered_dataset`'s work once the dataset folder is locked and checked."""
    phases, reference = fingerprint["phases"], fingerprint["reference"]
    qa_root = target / QA_SUBFOLDER
    qa_root.mkdir(parents=True, exist_ok=True)
    settings_file = qa_root / "settings.json"
    if not settings_file.is_file():
        write_json_atomic(settings_file, fingerprint)
    current = {c.name for c in cases}
    for old in sorted(p.name for p in qa_root.iterdir() if p.is_dir()) if shard is None else []:
        if old not in current:
            _remove_case_outputs(target, old, len(phases))
            print(f"{old}: gone from the input, its outputs removed")
    done: dict[str, dict] = {}
    jobs, actions = [], {}
    for case in cases:
        inputs = case_input_digests(case)
        masked = first_pass is not None and not case.is_labelled and reference not in case.liver_masks
        key = _input_key(inputs, fingerprint, case.is_labelled, first_pass.identity if masked else None)
        split = "imagesTr" if case.is_labelled else "imagesTs"
        qa_file = qa_root / case.name / "qa.json"
        old = _load_record(qa_file) if qa_file.is_file() else None
        if old is not None and old.get("input_key") == key:
            old["flagged"] = flag_reasons(old)
            done[case.name] = old
            continue
        if old is not None:
            if old.get("split") != split:
                labelled = "now labelled" if case.is_labelled else "no longer labelled"
                actions[case.name] = f"{case.name}: {labelled}, moved {old.get('split')} -> {split} (re-registered)"
            elif old.get("input_key") is None:
                actions[case.name] = (f"{case.name}: registered by an older diff4mm_register that kept no record of "
                                      "its inputs, re-registered")
            elif old.get("inputs") == inputs and (masked or old.get("first_pass") is not None):
                actions[case.name] = f"{case.name}: first-pass liver changed (model or none), re-registered"
            else:
                actions[case.name] = f"{case.name}: input changed{_changed(old.get('inputs'), inputs)}, re-registered"
        _remove_case_outputs(target, case.name, len(phases))  # a changed, moved or unfinished case starts clean
        jobs.append(Job(case, str(target), tuple(phases), reference, fingerprint["settings"], montage_fn, inputs, key))
    if first_pass is not None:
        jobs = _with_first_pass(jobs, first_pass, qa_root, progress, tqdm)
    fresh = [j.case.name for j in jobs if j.case.name not in actions]
    if shard is None and done and fresh:  # a resumed run, or the final step after shards: say what was missing
        tqdm.write(f"{len(done)} cases registered already; registering the {len(fresh)} missing: "
                   f"{', '.join(fresh[:10])}{' ...' if len(fresh) > 10 else ''}", file=sys.stdout)
    if shard is not None and jobs:
        (target / "dataset.json").unlink(missing_ok=True)  # incomplete until the final, unsharded run
    bar = tqdm(total=len(cases), initial=len(done), desc="registering cases" + (f" (shard {shard})" if shard
               else ""), unit="case", disable=not progress)

    def finished(record: dict) -> None:
        done[record["case"]] = record
        if record["case"] in actions:
            tqdm.write(actions[record["case"]], file=sys.stdout)
        bar.update()

    if num_processes > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(num_processes, initializer=_init_worker) as pool:
            for record in pool.imap(_register_case, jobs):
                finished(record)
    else:
        for job in jobs:
            finished(_register_case(job))
    bar.close()
    records = [done[c.name] for c in cases]
    if shard is not None:
        _report_flagged(records, qa_root, None, allow_failed, target)
        print(f"shard {shard}: {len(records)} cases registered ({len(jobs)} in this run) in {target}; when every "
              "shard has finished, run the same command without --shard: it checks that every case is there, "
              "registers any that is missing and writes dataset.json")
        return target
    rows = _summary_rows(records)
    summary = qa_root / "summary.csv"
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(summary, buffer.getvalue())
    else:
        summary.unlink(missing_ok=True)
    _report_flagged(records, qa_root, summary, allow_failed, target)
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
    write_json_atomic(target / "dataset.json", dataset_json)
    return target
