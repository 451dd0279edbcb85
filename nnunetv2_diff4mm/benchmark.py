"""The benchmark behind `diff4mm_benchmark`: Diff4MMTrainer against two nnU-Net baselines on one dataset.

Arms (same plans, schedule, folds and labelled subsets; only input channels or trainer differ):

- **(a)** nnU-Net on the reference (annotated) phase alone. It trains on a derived raw dataset
  ``Dataset<ID+100>_<NAME>RefPhase`` holding channel ``_000r`` of the source as ``_0000`` (hard links where the
  file system allows, copies otherwise). Its plans are the source's plans moved over the way
  ``nnUNetv2_move_plans_between_datasets`` does it (after ``nnUNetv2_extract_fingerprint`` on the target), with
  channel r's intensity statistics and normalisation settings as its only channel, so that patch size, network,
  spacing and intensity normalisation equal arm (b)'s; then nnU-Net preprocesses it.
- **(b)** nnU-Net on all registered phases (the source dataset).
- **(c)** Diff4MMTrainer on all registered phases (needs the dataset's synthesis bundle and normal CTs).

Labelled fractions: fraction 1 trains on nnU-Net fold k of ``splits_final.json`` (created exactly as
nnU-Net would if missing). A fraction f < 1 trains on the first max(1, ceil(f·n)) training cases of fold k in
a fixed random order (seeded by fold), so smaller subsets are nested in larger ones; its validation cases are
fold k's. Each such subset is an extra entry appended to ``splits_final.json`` (nnU-Net reads as many splits as
the file holds; folds 0-4 stay untouched) and tagged with ``diff4mm_fraction``/``diff4mm_base_fold``; the
derived dataset gets the identical file, so arm (a) sees the same case lists.

Training and inference run nnU-Net's own commands as subprocesses (``nnUNetv2_train``, ``nnUNetv2_predict`` on
``imagesTs``), logged under OUT/logs. The cpu preset predicts with ``--disable_tta`` (mirroring TTA costs 8x
the forward passes on a CPU); the default preset keeps nnU-Net's TTA unless told otherwise.

Worker counts: ``-np`` also sets nnU-Net's ``nnUNet_n_proc_DA`` and ``nnUNet_def_n_proc`` for the subprocesses
unless already set (nnU-Net's final validation otherwise spawns 8 export workers; measured on the shared 2-core
machine: 160 s instead of 45 s for a 1-epoch training on a 3-case phantom).

Resumable: a fold with ``checkpoint_final.pth`` is not retrained (one with only ``checkpoint_latest.pth``
continues with ``--c``); a predictions folder is only renamed into place once every test case is predicted, so
an existing one is reused. A re-run of a finished benchmark only re-evaluates and rewrites the report.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import conventions
from .evaluation import metrics as M
from .evaluation import report

CONFIGURATION = "3d_fullres"
NNUNET_SPLIT_SEED = 12345  # nnU-Net's own seed for its 5-fold split (nnUNetTrainer.do_split)
NNUNET_N_SPLITS = 5
DERIVED_ID_OFFSET = 100
DERIVED_SUFFIX = "RefPhase"
FRACTION_TAG, BASE_FOLD_TAG, SEED_TAG = "diff4mm_fraction", "diff4mm_base_fold", "diff4mm_subset_seed"


class BenchmarkError(RuntimeError):
    """Bad input or a failed step; the message is one line naming the file or command and the fix."""


@dataclass(frozen=True)
class Arm:
    key: str
    method: str  # column value in per_case.csv
    label: str
    derived: bool  # trains on the derived reference-phase dataset
    role: str  # "baseline" or "diff4mm": which trainer of the preset


ARMS = (
    Arm("a", "a_nnunet_refphase", "(a) nnU-Net, reference phase only", True, "baseline"),
    Arm("b", "b_nnunet_allphases", "(b) nnU-Net, all registered phases", False, "baseline"),
    Arm("c", "c_diff4mm", "(c) Diff4MM, all phases + synthetic tumors", False, "diff4mm"),
)
ARM_BY_KEY = {a.key: a for a in ARMS}
ARM_BY_METHOD = {a.method: a for a in ARMS}
PAIRS = (("c", "b"), ("b", "a"))  # paired differences reported: first minus second


@dataclass(frozen=True)
class Preset:
    name: str
    plans: str
    baseline_trainer: str
    diff4mm_trainer: str
    tta: bool
    device: str


PRESETS = {
    "cpu": Preset("cpu", "Diff4MMCPUPlans", "nnUNetTrainer_Diff4MMDemo", "Diff4MMTrainer_Demo", tta=False,
                  device="cpu"),
    "default": Preset("default", "nnUNetPlans", "nnUNetTrainer", "Diff4MMTrainer", tta=True, device="auto"),
}


@dataclass(frozen=True)
class Roots:
    """nnU-Net's three folders."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def from_env(cls) -> "Roots":
        values = {}
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            if not os.environ.get(var):
                raise BenchmarkError(f"environment variable {var} is not set; set nnUNet_raw, nnUNet_preprocessed "
                                     "and nnUNet_results as for nnU-Net itself")
            values[var] = Path(os.environ[var])
        return cls(values["nnUNet_raw"], values["nnUNet_preprocessed"], values["nnUNet_results"])


@dataclass
class BenchmarkSettings:
    dataset: str  # ID or DatasetXXX_Name
    output: Path
    folds: tuple[int, ...] = (0,)
    fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    preset: str = "cpu"
    arms: tuple[str, ...] = ("a", "b", "c")
    trainers: tuple[str, str] | None = None  # (baseline, diff4mm); None: the preset's
    test_labels: Path | None = None
    phantom: Path | None = None
    derived_id: int | None = None  # None: dataset ID + 100
    reference_phase: str | None = None  # None: dataset.json "diff4mm"."reference"
    nsd_tolerance_mm: float = M.DEFAULT_NSD_TOLERANCE_MM
    num_processes: int = 2
    device: str | None = None  # None: the preset's ("auto" = cuda if available)
    tta: bool | None = None  # None: the preset's
    subset_seed: int = 0
    configuration: str = CONFIGURATION


@dataclass(frozen=True)
class Job:
    """One training + prediction: an arm at one labelled fraction and fold."""

    arm: Arm
    fraction: float
    fold: int  # the benchmark's (nnU-Net base) fold
    nnunet_fold: int  # index in splits_final.json that nnU-Net trains (= fold for fraction 1)
    dataset: str  # nnU-Net dataset name
    trainer: str
    plans: str
    configuration: str = CONFIGURATION

    @property
    def key(self) -> str:
        return f"{self.arm.method}/frac{self.fraction:g}/fold{self.fold}"


# --- small helpers ----------------------------------------------------------------------------------------------
def _write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json_atomic(path: Path, data) -> None:
    _write_text_atomic(path, json.dumps(data, indent=1))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make dst the same file as src (hard link, else a copy keeping mtime); up-to-date targets are kept."""
    if dst.exists():
        if os.path.samefile(src, dst):
            return
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
            return
    tmp = dst.with_name(f".tmp-{os.getpid()}-{dst.name}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def dataset_id_and_name(dataset: str | int, roots: Roots) -> tuple[int, str]:
    """(ID, folder name) of a raw dataset given as 501, '501' or 'Dataset501_Name'."""
    text = str(dataset)
    if text.startswith("Dataset"):
        if not (roots.raw / text).is_dir():
            raise BenchmarkError(f"{roots.raw / text}: no such raw dataset")
        return int(text[7:10]), text
    if not text.isdigit():
        raise BenchmarkError(f"dataset {text!r}: give an ID (501) or a folder name (Dataset501_Name)")
    found = sorted(p.name for p in roots.raw.glob(f"Dataset{int(text):03d}_*") if p.is_dir())
    if len(found) != 1:
        raise BenchmarkError(f"{roots.raw}: {'no' if not found else len(found)} raw datasets with ID {int(text)}"
                             f"{': ' + ', '.join(found) if found else ''}")
    return int(text), found[0]


def read_dataset_json(raw_folder: Path) -> dict:
    path = Path(raw_folder) / "dataset.json"
    if not path.is_file():
        raise BenchmarkError(f"{path}: missing; not an nnU-Net raw dataset")
    return json.loads(path.read_text(encoding="utf-8"))


def reference_channel(dataset_json: dict, reference_phase: str | None = None) -> tuple[int, str]:
    """(channel index, phase name) of the reference phase: the given name, else dataset.json's
    "diff4mm"."reference"; looked up in "diff4mm"."phases" (datasets written by diff4mm_register, whose
    channel_names are all "CT") or else in channel_names (datasets named by phase)."""
    extra = dataset_json.get("diff4mm") or {}
    names = {int(k): v for k, v in dataset_json.get("channel_names", dataset_json.get("modality", {})).items()}
    phase = reference_phase or extra.get("reference")
    if phase is None:
        raise BenchmarkError("dataset.json names no reference phase (\"diff4mm\": {\"reference\": ...}); "
                             "pass --reference-phase")
    phases = extra.get("phases")
    if phases and len(phases) == len(names):
        names = dict(enumerate(phases))
    matches = [k for k, v in names.items() if v == phase]
    if len(matches) != 1:
        raise BenchmarkError(f"reference phase {phase} is not exactly one of the channels "
                             f"{', '.join(f'{k}={v}' for k, v in sorted(names.items()))}")
    return matches[0], phase


def _case_ids(folder: Path, ending: str, channel_suffix: str = "") -> list[str]:
    suffix = channel_suffix + ending
    return sorted(p.name[: -len(suffix)] for p in Path(folder).glob(f"*{suffix}") if not p.name.startswith("."))


def test_cases(raw_folder: Path, ending: str) -> list[str]:
    return _case_ids(Path(raw_folder) / "imagesTs", ending, "_0000")


def training_cases(raw_folder: Path, ending: str) -> list[str]:
    return _case_ids(Path(raw_folder) / "labelsTr", ending)


# --- derived reference-phase dataset ---------------------------------------------------------------------------
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
    _write_json_atomic(target_raw / "dataset.json", derived)
    return target_raw


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
            from .planning import plan_and_preprocess_cpu

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
    _write_json_atomic(plans_file, wanted)
    shutil.copyfile(roots.raw / target_name / "dataset.json", folder / "dataset.json")
    preprocess_dataset(target_id, plans, (configuration,), [num_processes], show_progress_bar=False)


# --- splits: nnU-Net's folds and labelled-fraction subsets -------------------------------------------------------
def base_splits(splits: list[dict]) -> list[dict]:
    return [s for s in splits if FRACTION_TAG not in s]


def nnunet_default_splits(cases: list[str]) -> list[dict]:
    """The split nnU-Net writes when splits_final.json is missing (5-fold KFold, seed 12345, sorted keys);
    fewer folds when there are fewer than 5 cases (where nnU-Net itself would fail)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if len(cases) < 2:
        raise BenchmarkError(f"{len(cases)} labelled case(s): a train/validation split needs at least 2")
    splits = generate_crossval_split(sorted(cases), seed=NNUNET_SPLIT_SEED, n_splits=min(NNUNET_N_SPLITS, len(cases)))
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def fraction_subset(train_cases: list[str], fraction: float, fold: int, seed: int = 0) -> list[str]:
    """The first max(1, ceil(fraction·n)) of fold `fold`'s training cases in a fixed random order (nested over
    fractions), returned sorted."""
    if not 0 < fraction <= 1:
        raise BenchmarkError(f"fraction {fraction:g} is not in (0, 1]")
    ordered = sorted(train_cases)
    order = np.random.default_rng([seed, fold]).permutation(len(ordered))
    count = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return sorted(ordered[i] for i in order[:count])


def fraction_fold(splits: list[dict], fold: int, fraction: float, seed: int = 0) -> int:
    """Index in `splits` (appended in place if new) of fold `fold` at labelled `fraction`."""
    bases = base_splits(splits)
    if not 0 <= fold < len(bases):
        raise BenchmarkError(f"fold {fold} does not exist: splits_final.json has {len(bases)} folds (0-"
                             f"{len(bases) - 1})")
    base = bases[fold]
    base_index = next(i for i, s in enumerate(splits) if s is base)
    if fraction >= 1:
        return base_index
    entry = {"train": fraction_subset(base["train"], fraction, fold, seed), "val": list(base["val"]),
             FRACTION_TAG: fraction, BASE_FOLD_TAG: fold, SEED_TAG: seed}
    for i, s in enumerate(splits):
        if s.get(FRACTION_TAG) == fraction and s.get(BASE_FOLD_TAG) == fold and s.get(SEED_TAG) == seed:
            if s["train"] != entry["train"] or s["val"] != entry["val"]:
                raise BenchmarkError(f"split {i} (fold {fold}, fraction {fraction:g}) no longer matches fold {fold} "
                                     "of splits_final.json; remove that entry and the models trained on it")
            return i
    splits.append(entry)
    return len(splits) - 1


def prepare_splits(source_preprocessed: Path, cases: list[str], folds, fractions, seed: int = 0,
                   mirror_to: Path | None = None) -> tuple[dict[tuple[float, int], int], list[dict]]:
    """Make sure splits_final.json holds every (fraction, fold) subset; copy the file to `mirror_to` (the
    derived dataset's preprocessed folder). Returns {(fraction, fold): nnU-Net fold index} and the splits."""
    path = Path(source_preprocessed) / "splits_final.json"
    splits = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else nnunet_default_splits(cases)
    before = json.dumps(splits)
    index = {(f, k): fraction_fold(splits, k, f, seed) for f in fractions for k in folds}
    if json.dumps(splits) != before or not path.is_file():
        _write_json_atomic(path, splits)
    if mirror_to is not None:
        target = Path(mirror_to) / "splits_final.json"
        if not target.is_file() or json.loads(target.read_text(encoding="utf-8")) != splits:
            _write_json_atomic(target, splits)
    return index, splits


# --- training and prediction (resumable) -----------------------------------------------------------------------
def model_folder(results_root: Path, dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's output folder of a trainer/plans/configuration (as nnunetv2's get_output_folder)."""
    return Path(results_root) / dataset / f"{trainer}__{plans}__{configuration}"


def fold_folder(results_root: Path, job: Job) -> Path:
    return model_folder(results_root, job.dataset, job.trainer, job.plans, job.configuration) / f"fold_{job.nnunet_fold}"


def training_finished(results_root: Path, job: Job) -> bool:
    return (fold_folder(results_root, job) / "checkpoint_final.pth").is_file()


def predictions_finished(pred_dir: Path, cases: list[str], ending: str) -> bool:
    return Path(pred_dir).is_dir() and all((Path(pred_dir) / f"{c}{ending}").is_file() for c in cases)


def nnunet_command(name: str) -> str:
    """An nnU-Net console script: the one next to this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise BenchmarkError(f"{name}: not found next to {sys.executable} or on PATH; install nnunetv2")
    return found


def run_logged(cmd: list[str], log_path: Path, env: dict | None = None) -> None:
    """Run cmd with stdout+stderr appended to log_path; a non-zero exit raises BenchmarkError."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        returncode = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if returncode:
        tail = [line for line in log_path.read_text(errors="replace", encoding="utf-8").splitlines() if line.strip()][-1:]
        raise BenchmarkError(f"{Path(cmd[0]).name} exited with {returncode} (log {log_path}): "
                             f"{tail[0].strip() if tail else ''}")


def train_job(job: Job, results_root: Path, device: str, log_dir: Path, runner=run_logged,
              env: dict | None = None) -> str:
    """Train one job with nnUNetv2_train unless finished; "reused" or "trained"."""
    if training_finished(results_root, job):
        return "reused"
    cmd = [nnunet_command("nnUNetv2_train"), job.dataset, job.configuration, str(job.nnunet_fold), "-tr",
           job.trainer, "-p", job.plans, "-device", device]
    if (fold_folder(results_root, job) / "checkpoint_latest.pth").is_file():
        cmd.append("--c")
    runner(cmd, Path(log_dir) / f"train_{job.key.replace('/', '_')}.log", env)
    if not training_finished(results_root, job):
        raise BenchmarkError(f"{fold_folder(results_root, job)}: nnUNetv2_train ended without checkpoint_final.pth")
    return "trained"


def predict_job(job: Job, input_dir: Path, pred_dir: Path, cases: list[str], ending: str, device: str, tta: bool,
                num_processes: int, log_dir: Path, runner=run_logged, env: dict | None = None) -> str:
    """Predict `cases` of input_dir with the job's model unless pred_dir already holds them all; "reused" or
    "predicted". Predictions go to a hidden staging folder that is renamed to pred_dir when complete."""
    pred_dir = Path(pred_dir)
    if predictions_finished(pred_dir, cases, ending):
        return "reused"
    staging = pred_dir.with_name(f".{pred_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [nnunet_command("nnUNetv2_predict"), "-i", str(input_dir), "-o", str(staging), "-d", job.dataset,
           "-c", job.configuration, "-f", str(job.nnunet_fold), "-tr", job.trainer, "-p", job.plans,
           "-device", device, "-npp", str(num_processes), "-nps", str(num_processes), "--disable_progress_bar"]
    if not tta:
        cmd.append("--disable_tta")
    runner(cmd, Path(log_dir) / f"predict_{job.key.replace('/', '_')}.log", env)
    if not predictions_finished(staging, cases, ending):
        raise BenchmarkError(f"{staging}: nnUNetv2_predict did not write every test case")
    shutil.rmtree(pred_dir, ignore_errors=True)
    os.replace(staging, pred_dir)
    return "predicted"


def synthesis_disabled(results_root: Path, job: Job) -> bool:
    """True if the Diff4MM trainer logged that it fell back to real samples only."""
    return any("Diff4MM: synthesis disabled" in p.read_text(errors="replace", encoding="utf-8")
               for p in fold_folder(results_root, job).glob("training_log_*.txt"))


# --- references ------------------------------------------------------------------------------------------------
def collect_references(cases: list[str], ending: str, out_dir: Path, test_labels: Path | None = None,
                       phantom: Path | None = None) -> Path:
    """Flat folder out_dir/<case><ending> with the reference label of every test case (links or copies; a
    phantom's ground_truth/<case>/label.nii.gz is converted when the dataset's file ending differs)."""
    import SimpleITK as sitk

    from registration.image_io import write_image_atomic

    if (test_labels is None) == (phantom is None):
        raise BenchmarkError("give the test-set references with exactly one of --test-labels DIR or --phantom DIR")
    sources = {}
    for case in cases:
        src = (Path(test_labels) / f"{case}{ending}" if test_labels is not None
               else Path(phantom) / "ground_truth" / case / "label.nii.gz")
        if not src.is_file():
            raise BenchmarkError(f"{src}: missing reference label of test case {case}")
        sources[case] = src
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case, src in sources.items():
        dst = out_dir / f"{case}{ending}"
        if src.name.endswith(ending):
            _link_or_copy(src, dst)
        elif not dst.is_file() or dst.stat().st_mtime_ns < src.stat().st_mtime_ns:
            write_image_atomic(sitk.ReadImage(str(src)), dst)
    return out_dir


# --- the whole benchmark ---------------------------------------------------------------------------------------
def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise BenchmarkError(f"--device {device}: choose cpu, cuda or auto")
    return device


def _log(message: str) -> None:
    print(f"[diff4mm benchmark] {message}", flush=True)


def run_benchmark(settings: BenchmarkSettings, roots: Roots | None = None, runner=run_logged) -> Path:
    """Prepare datasets, train and predict every job (resumably), evaluate and write the report; returns the
    summary.md path. All inputs are checked before anything expensive starts."""
    from tqdm import tqdm

    roots = roots or Roots.from_env()
    s = settings
    if s.preset not in PRESETS:
        raise BenchmarkError(f"--preset {s.preset}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[s.preset]
    baseline_trainer, diff4mm_trainer = s.trainers or (preset.baseline_trainer, preset.diff4mm_trainer)
    arms = [ARM_BY_KEY[k] for k in ARM_BY_KEY if k in s.arms]
    unknown = set(s.arms) - set(ARM_BY_KEY)
    if unknown or not arms:
        raise BenchmarkError(f"--arms {' '.join(s.arms)}: choose from a, b, c")
    fractions = sorted(set(float(f) for f in s.fractions))
    if any(not 0 < f <= 1 for f in fractions):
        raise BenchmarkError(f"--fractions {' '.join(f'{f:g}' for f in s.fractions)}: each must be in (0, 1]")
    device = _resolve_device(s.device or preset.device)
    tta = preset.tta if s.tta is None else s.tta
    out = Path(s.output)

    # inputs, checked before any expensive step
    source_id, source_name = dataset_id_and_name(s.dataset, roots)
    source_raw = roots.raw / source_name
    data = read_dataset_json(source_raw)
    ending = data.get("file_ending", ".nii.gz")
    channel, phase = reference_channel(data, s.reference_phase)
    cases_tr = training_cases(source_raw, ending)
    cases_ts = test_cases(source_raw, ending)
    if not cases_ts:
        raise BenchmarkError(f"{source_raw / 'imagesTs'}: no held-out test images (<case>_0000{ending})")
    references = collect_references(cases_ts, ending, out / "references", s.test_labels, s.phantom)
    if any(a.role == "diff4mm" for a in arms):
        bundle, normal = conventions.bundle_folder(source_raw), conventions.normal_folder(source_raw)
        if not (bundle / "diff4mm_bundle.json").is_file():
            raise BenchmarkError(f"{bundle}: no synthesis bundle for arm (c); train one with "
                                 f"diff4mm_train_synthesizer (or set {conventions.ENV_BUNDLE}), or leave out arm c "
                                 "with --arms a b")
        if not (normal / "imagesTr").is_dir():
            raise BenchmarkError(f"{normal}: no normal CTs for arm (c); run diff4mm_inpaint (or set "
                                 f"{conventions.ENV_NORMAL}), or leave out arm c with --arms a b")
    derived_id = s.derived_id if s.derived_id is not None else source_id + DERIVED_ID_OFFSET
    derived_name = derived_dataset_name(source_name, derived_id)
    use_derived = any(a.derived for a in arms)
    if use_derived:
        if not 1 <= derived_id <= 999 or derived_id == source_id:
            raise BenchmarkError(f"derived dataset ID {derived_id} must be in 1..999 and differ from {source_id}; "
                                 "choose one with --derived-id")
        _check_id_free(roots, derived_id, derived_name)

    # datasets, plans, preprocessing, splits
    t0 = time.perf_counter()
    source_pre = roots.preprocessed / source_name
    if not preprocessing_complete(source_pre, preset.plans, s.configuration, cases_tr):
        _log(f"planning and preprocessing {source_name} ({preset.plans})")
        plan_and_preprocess(source_id, preset, s.configuration, s.num_processes,
                            plans_exist=(source_pre / f"{preset.plans}.json").is_file())
    if use_derived:
        _log(f"reference-phase dataset {derived_name} ({phase} = channel {channel} of {source_name})")
        derive_reference_phase_dataset(source_raw, roots.raw / derived_name, channel, phase)
        prepare_derived_preprocessed(source_name, derived_name, derived_id, preset.plans, channel, s.configuration,
                                     cases_tr, roots, s.num_processes)
    fold_index, splits = prepare_splits(source_pre, cases_tr, s.folds, fractions, s.subset_seed,
                                        mirror_to=roots.preprocessed / derived_name if use_derived else None)
    prep_seconds = time.perf_counter() - t0

    jobs = [Job(arm, f, k, fold_index[(f, k)], derived_name if arm.derived else source_name,
                diff4mm_trainer if arm.role == "diff4mm" else baseline_trainer, preset.plans, s.configuration)
            for arm in arms for f in fractions for k in s.folds]
    n_train = {f: len(splits[fold_index[(f, s.folds[0])]]["train"]) for f in fractions}

    # train, predict, evaluate
    env = dict(os.environ)
    # nnU-Net's worker counts (augmentation; export pool of the final validation, 8 by default)
    env.setdefault("nnUNet_n_proc_DA", str(s.num_processes))
    env.setdefault("nnUNet_def_n_proc", str(s.num_processes))
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    warnings, finished = [], []
    bar = tqdm(jobs, desc="benchmark runs", unit="run")
    for job in bar:
        bar.set_postfix_str(job.key)
        record = timings.setdefault(job.key, {})
        record["nnunet_fold"] = job.nnunet_fold
        start = time.perf_counter()
        status = train_job(job, roots.results, device, out / "logs", runner, env)
        if status == "trained":
            record["train_s"] = time.perf_counter() - start
        record["train_status"] = status
        _write_json_atomic(timings_path, timings)
        if job.arm.role == "diff4mm" and synthesis_disabled(roots.results, job):
            warnings.append(f"{job.key}: Diff4MMTrainer logged 'synthesis disabled' (trained on real samples "
                            f"only); see {fold_folder(roots.results, job)}")
        input_dir = roots.raw / job.dataset / "imagesTs"
        pred_dir = out / "predictions" / job.arm.method / f"frac{job.fraction:g}" / f"fold{job.fold}"
        start = time.perf_counter()
        status = predict_job(job, input_dir, pred_dir, cases_ts, ending, device, tta, s.num_processes,
                             out / "logs", runner, env)
        if status == "predicted":
            record["predict_s"] = time.perf_counter() - start
        record["predict_status"] = status
        _write_json_atomic(timings_path, timings)
        finished.append((job, M.folder_pairs(pred_dir, references, ending, cases_ts)))
    bar.close()
    _log(f"evaluating {len(finished)} x {len(cases_ts)} predictions")
    scores = iter(M.evaluate_pairs([p for _, pairs in finished for p in pairs], s.nsd_tolerance_mm,
                                   s.num_processes))
    rows = [{"method": job.arm.method, "fraction": job.fraction, "fold": job.fold, **next(scores)}
            for job, pairs in finished for _ in pairs]

    settings_table = {
        "dataset": source_name,
        "reference phase": f"{phase} (channel {channel})",
        "arm (a) dataset": derived_name if use_derived else "not run",
        "preset": f"{preset.name}: plans {preset.plans}, configuration {s.configuration}",
        "trainers": f"baseline {baseline_trainer}, Diff4MM {diff4mm_trainer}",
        "folds": ", ".join(str(k) for k in s.folds),
        f"labelled fractions (training cases in fold {s.folds[0]})":
            ", ".join(f"{f:g} ({n_train[f]})" for f in fractions),
        "test cases": f"{len(cases_ts)} (imagesTs; references from "
                      f"{s.test_labels or Path(s.phantom) / 'ground_truth'})",
        "NSD tolerance": f"{s.nsd_tolerance_mm:g} mm",
        "inference": f"device {device}, test-time mirroring {'on' if tta else 'off (--disable_tta)'}",
        "dataset preparation (this run)": f"{prep_seconds:.0f} s",
    }
    return report.write_report(
        rows, out, {a.method: a.label for a in ARMS},
        [(ARM_BY_KEY[x].method, ARM_BY_KEY[y].method) for x, y in PAIRS], settings_table,
        {job.key: timings[job.key] for job in jobs}, warnings, n_train, f"Diff4MM benchmark: {source_name}",
        s.nsd_tolerance_mm)
