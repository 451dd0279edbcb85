"""Arm (a)'s derived reference-phase dataset: raw images, transferred plans and preprocessing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from registration.image_io import write_json_atomic

from .common import (DERIVED_SUFFIX, BenchmarkError, Preset, Roots, _case_ids, _link_or_copy,
                     read_dataset_json)


def derived_dataset_name(source_name: str, derived_id: int) -> str:
    return f"Dataset{derived_id:03d}_{source_name.split('_', 1)[1]}{DERIVED_SUFFIX}"


def _check_id_free(roots: Roots, derived_id: int, name: str) -> None:
    for root in (roots.raw, roots.preprocessed, roots.results):
        for other in root.glob(f"Dataset{derived_id:03d}_*") if root.is_dir() else ():
            if other.name != name:
                raise BenchmarkError(f"{other}: dataset ID {derived_id} is taken by another dataset; choose a free "
                                     "ID with --derived-id")


def derive_reference_phase_dataset(source_raw: Path, target_raw: Path, channel: int, phase: str) -> Path:
    """Write (or bring up to date) the raw dataset holding only channel `channel` of source_raw, as _0000.

    Images are hard links (copies across file systems); dataset.json, written last, has one channel and
    "diff4mm": {"phases": [phase], "reference": phase, "derived_from": <source>, "source_channel": channel}.
    """
    source_raw, target_raw = Path(source_raw), Path(target_raw)
    data = read_dataset_json(source_raw)
    ending = data["file_ending"]
    for sub, channel_in, channel_out in (("imagesTr", f"_{channel:04d}", "_0000"),
                                         ("imagesTs", f"_{channel:04d}", "_0000"), ("labelsTr", "", "")):
        src_dir, dst_dir = source_raw / sub, target_raw / sub
        if not src_dir.is_dir():
            continue
        dst_dir.mkdir(parents=True, exist_ok=True)
        wanted = set()
        for case in _case_ids(src_dir, ending, channel_in):
            dst = dst_dir / f"{case}{channel_out}{ending}"
            _link_or_copy(src_dir / f"{case}{channel_in}{ending}", dst)
            wanted.add(dst.name)
        for stale in dst_dir.glob(f"*{ending}"):  # cases removed from the source
            if stale.name not in wanted:
                stale.unlink()
    derived = dict(data)
    # the source channel's normalisation name ("CT" from diff4mm_register): arm (a) is normalised like the others
    derived["channel_names"] = {"0": data.get("channel_names", data.get("modality", {}))[str(channel)]}
    derived.pop("modality", None)
    derived["name"] = target_raw.name.split("_", 1)[1]
    derived["description"] = f"{phase} channel of {source_raw.name} (diff4mm_benchmark arm a)"
    derived["diff4mm"] = {**(data.get("diff4mm") or {}), "phases": [phase], "reference": phase,
                          "derived_from": source_raw.name, "source_channel": channel}
    write_json_atomic(target_raw / "dataset.json", derived, make_parents=True)
    return target_raw


def write_reference_copied_inputs(images_ts: Path, target: Path, channel: int, n_channels: int, ending: str,
                                  cases: list[str]) -> Path:
    """Test inputs for Table 2's protocol: `target/<case>_000k<ending>` is channel `channel` of images_ts for
    every k < n_channels (hard links where possible), so a multi-phase model sees the reference phase in every
    channel. Existing up-to-date files are kept; files of other cases are removed."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for case in cases:
        src = Path(images_ts) / f"{case}_{channel:04d}{ending}"
        if not src.is_file():
            raise BenchmarkError(f"{src}: missing; the reference channel of every test case is needed")
        for k in range(n_channels):
            dst = target / f"{case}_{k:04d}{ending}"
            _link_or_copy(src, dst)
            wanted.add(dst.name)
    for stale in target.glob(f"*{ending}"):
        if stale.name not in wanted:
            stale.unlink()
    return target


# --- plans and preprocessing -----------------------------------------------------------------------------------
def preprocessing_complete(preprocessed_folder: Path, plans: str, configuration: str, cases: list[str]) -> bool:
    """Plans file, dataset.json and a properties file (nnU-Net writes it last) for every case exist."""
    folder = Path(preprocessed_folder)
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file() or not (folder / "dataset.json").is_file():
        return False
    config = json.loads(plans_file.read_text(encoding="utf-8")).get("configurations", {}).get(configuration)
    if config is None:
        raise BenchmarkError(f"{plans_file}: no configuration {configuration}")
    data_folder = folder / config.get("data_identifier", f"{plans}_{configuration}")
    return all((data_folder / f"{case}.pkl").is_file() for case in cases)


def plan_and_preprocess(dataset_id: int, preset: Preset, configuration: str, num_processes: int,
                        plans_exist: bool) -> None:
    """nnU-Net's fingerprint, plan and preprocess steps with the preset's planner (only preprocessing when the
    plans already exist)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints,
                                                                      plan_experiment_dataset,
                                                                      preprocess_dataset)

    if not plans_exist:
        if preset.name == "cpu":
            from ..planning import plan_and_preprocess_cpu

            plan_and_preprocess_cpu(dataset_id, num_processes, True, (configuration,))
            return
        extract_fingerprints([dataset_id], num_processes=num_processes, check_dataset_integrity=True, clean=False,
                             verbose=False)
        plan_experiment_dataset(dataset_id)
    preprocess_dataset(dataset_id, preset.plans, (configuration,), [num_processes], show_progress_bar=False)


PER_CHANNEL_KEYS = ("normalization_schemes", "use_mask_for_norm")  # per-channel lists in each configuration


def transferred_plans(source_plans: dict, target_name: str, channel: int) -> dict:
    """The source's plans for the derived dataset: what nnUNetv2_move_plans_between_datasets writes, with channel
    `channel`'s intensity statistics, normalisation scheme and mask setting as the only channel, so that
    normalisation equals arm (b)'s for that phase."""
    plans = json.loads(json.dumps(source_plans))
    plans["dataset_name"] = target_name
    props = source_plans["foreground_intensity_properties_per_channel"]
    plans["foreground_intensity_properties_per_channel"] = {"0": props[str(channel)]}
    for config in plans.get("configurations", {}).values():
        for key in PER_CHANNEL_KEYS:
            if isinstance(config.get(key), list) and len(config[key]) > channel:
                config[key] = [config[key][channel]]
    return plans


def prepare_derived_preprocessed(source_name: str, target_name: str, target_id: int, plans: str, channel: int,
                                 configuration: str, cases: list[str], roots: Roots, num_processes: int) -> None:
    """Fingerprint (integrity check included), transferred plans, dataset.json and preprocessing of the derived
    dataset; skipped when its plans already equal the transferred ones and preprocessing is complete."""
    source_plans = json.loads((roots.preprocessed / source_name / f"{plans}.json").read_text(encoding="utf-8"))
    wanted = transferred_plans(source_plans, target_name, channel)
    folder = roots.preprocessed / target_name
    plans_file = folder / f"{plans}.json"
    current = json.loads(plans_file.read_text(encoding="utf-8")) if plans_file.is_file() else None
    if current == wanted and preprocessing_complete(folder, plans, configuration, cases):
        return
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, preprocess_dataset

    if not (folder / "dataset_fingerprint.json").is_file():  # nnUNetTrainer copies it into its output folder
        extract_fingerprints([target_id], num_processes=num_processes, check_dataset_integrity=True, clean=False,
                             verbose=False)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plans_file, wanted, make_parents=True)
    shutil.copyfile(roots.raw / target_name / "dataset.json", folder / "dataset.json")
    preprocess_dataset(target_id, plans, (configuration,), [num_processes], show_progress_bar=False)


