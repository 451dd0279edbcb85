"""An existing nnU-Net raw dataset whose channels are unregistered phases, seen as the multi-phase input layout.

Many users already keep their multi-phase CT as an nnU-Net raw dataset (``imagesTr/<case>_0000..000k``, the
label on one channel's grid, ``channel_names`` in ``dataset.json``). :func:`phase_layout_from_nnunet` writes the
input layout every stage-1 command reads (``OUT/<case>/<PHASE><ending>``, ``OUT/<case>/label<ending>``) as
symbolic links to those files, so nothing is copied and the user's dataset is never written to; then
``diff4mm_validate OUT`` and ``diff4mm_register OUT ...`` run unchanged, with the same validation and QA.

No library maps nnU-Net's channel files to named phases, hence this module. Phase names come from
``channel_names`` when they name phases (all distinct, not nnU-Net normalisation schemes such as "CT"), else
from ``phases`` given in channel order. The dataset's labels must be nnU-Net's ``background 0, liver 1,
tumor 2`` (the values the registration and every later stage read).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from .image_io import write_json_atomic
from .inputs import DEFAULT_REFERENCE, IMAGE_EXTENSIONS, LABEL_STEM, InputError

# a link to a .mhd/.nhdr header would lose its detached data file: one-file formats only
SINGLE_FILE_EXTENSIONS = tuple(e for e in IMAGE_EXTENSIONS if e not in (".mhd", ".nhdr"))
# nnU-Net's normalisation schemes (nnunetv2.preprocessing.normalization.map_channel_name_to_normalization): a
# dataset.json naming its channels by these says how to normalise them, not which phase they are
NORMALIZATION_NAMES = frozenset({"ct", "nonorm", "zscore", "rescale_to_0_1", "rgb_to_0_1"})
RECORD = ".diff4mm_from_nnunet.json"  # in OUT: what it was made from (a re-run with the same source refreshes it)


def _channel_names(dataset_json: dict, path: Path) -> list[str]:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, dict) or not names:
        raise InputError(f"{path}: no \"channel_names\" entry; not an nnU-Net v2 raw dataset.json")
    try:
        return [str(names[str(k)]) for k in range(len(names))]
    except KeyError:
        raise InputError(f"{path}: channel_names keys must be 0..{len(names) - 1}, got {sorted(names)}") from None


def resolve_phases(dataset_json: dict, path: Path, phases: Sequence[str] | None, reference: str | None
                   ) -> tuple[list[str], str]:
    """(phases in channel order, reference phase) for the dataset, or InputError naming dataset.json and the fix."""
    channels = _channel_names(dataset_json, path)
    if phases is not None:
        phases = [str(p) for p in phases]
        if len(phases) != len(channels):
            raise InputError(f"{path}: {len(channels)} channels ({', '.join(channels)}) but {len(phases)} phases "
                             f"given ({' '.join(phases)}); give one phase name per channel, in channel order")
    elif all(c.lower() in NORMALIZATION_NAMES for c in channels) or len(set(channels)) != len(channels):
        raise InputError(f"{path}: channel_names ({', '.join(channels)}) name normalisation schemes, not phases; "
                         f"pass the phase of each channel in channel order, e.g. --phases NC AP PVP DELAY")
    else:
        phases = channels
    if len(set(phases)) != len(phases):
        raise InputError(f"{path}: phase names given more than once ({' '.join(phases)}); list each phase once")
    if reference is None:
        reference = DEFAULT_REFERENCE
    if reference not in phases:
        raise InputError(f"{path}: reference phase {reference} is not one of the phases {' '.join(phases)}; pass "
                         "--reference with the phase whose grid the labels are on")
    labels = dataset_json.get("labels", {})
    values = {str(k).lower(): v for k, v in labels.items()} if isinstance(labels, dict) else {}
    if values.get("background") != 0 or values.get("liver") != 1 or values.get("tumor") != 2:
        raise InputError(f"{path}: labels {labels} are not background 0, liver 1, tumor 2; relabel the dataset "
                         "(liver 1, tumor 2) first, the registration and every later stage read those values")
    return list(phases), reference


def _cases(folder: Path, ending: str) -> list[str]:
    suffix = f"_0000{ending}"
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


def phase_layout_from_nnunet(dataset_dir, out_dir, phases: Sequence[str] | None = None,
                             reference: str | None = None) -> tuple[list[str], list[str], str]:
    """Write OUT/<case>/<PHASE><ending> (+ label<ending> for imagesTr cases) as links to the dataset's files.

    Every file is checked to exist before OUT is written; OUT is made in a hidden staging folder and renamed into
    place. OUT must not exist, or must be an earlier output of this function for the same dataset (it is then
    remade). Returns (case names, phases in channel order, reference phase).
    """
    dataset_dir, out_dir = Path(dataset_dir).resolve(), Path(out_dir)
    path = dataset_dir / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: missing; pass an nnU-Net raw dataset folder (with dataset.json, imagesTr)")
    try:
        dataset_json = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    phases, reference = resolve_phases(dataset_json, path, phases, reference)
    ending = str(dataset_json.get("file_ending", ".nii.gz"))
    if ending.lower() not in SINGLE_FILE_EXTENSIONS:
        raise InputError(f"{path}: file_ending {ending} is not a single-file 3D format this command can link "
                         f"({', '.join(SINGLE_FILE_EXTENSIONS)})")
    links: dict[str, dict[str, Path]] = {}
    for split in ("imagesTr", "imagesTs"):
        for case in _cases(dataset_dir / split, ending):
            if case in links:
                raise InputError(f"{dataset_dir / split}: case {case} is also in imagesTr; give it one name")
            files = {phase: dataset_dir / split / f"{case}_{k:04d}{ending}" for k, phase in enumerate(phases)}
            if split == "imagesTr":
                files[LABEL_STEM] = dataset_dir / "labelsTr" / f"{case}{ending}"
            missing = [f for f in files.values() if not f.is_file()]
            if missing:
                raise InputError(f"{missing[0]}: missing ({case} has channel _0000, and dataset.json names "
                                 f"{len(phases)} channels)")
            links[case] = files
    if not links:
        raise InputError(f"{dataset_dir}: no case <case>_0000{ending} in imagesTr or imagesTs")
    source = {"dataset": str(dataset_dir), "phases": phases, "reference": reference}
    if out_dir.exists():
        try:
            made_here = json.loads((out_dir / RECORD).read_text(encoding="utf-8")).get("dataset") == str(dataset_dir)
        except (OSError, ValueError):
            made_here = False
        if not made_here:
            raise InputError(f"{out_dir}: exists and was not made from {dataset_dir} by diff4mm_from_nnunet; "
                             "choose a new folder (nothing in it was changed)")
    staging = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.tmp")
    try:
        for case, files in links.items():
            (staging / case).mkdir(parents=True)
            for stem, target in files.items():
                os.symlink(target, staging / case / f"{stem}{ending}")
        write_json_atomic(staging / RECORD, source)
        if out_dir.exists():  # an earlier output for the same dataset: the new one replaces it whole
            old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.old")
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return sorted(links), phases, reference
