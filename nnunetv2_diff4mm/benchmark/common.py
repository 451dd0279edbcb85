"""Settings, arms, presets, nnU-Net roots and small file helpers shared by the benchmark modules."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..evaluation import metrics as M

CONFIGURATION = "3d_fullres"
DERIVED_ID_OFFSET = 100
DERIVED_SUFFIX = "RefPhase"


class BenchmarkError(RuntimeError):
    """Bad input or a failed step; the message is one line naming the file or command and the fix."""


@dataclass(frozen=True)
class Arm:
    key: str
    method: str  # column value in per_case.csv
    label: str
    derived: bool  # trains on the derived reference-phase dataset
    role: str  # "baseline" or "diff4mm": which trainer of the preset
    # diff4mm arms: the classical fill (synthesis/inpainting/presets.py CLASSICAL_METHODS) of the normal CTs the tumors are
    # painted into, instead of the learned inpainter's; such an arm trains MEDIAN_FILL_SUFFIX-named trainers
    normal_fill: str | None = None


ARMS = (
    Arm("a", "a_nnunet_refphase", "(a) nnU-Net, reference phase only", True, "baseline"),
    Arm("b", "b_nnunet_allphases", "(b) nnU-Net, all registered phases", False, "baseline"),
    Arm("c", "c_diff4mm", "(c) Diff4MM, all phases + synthetic tumors", False, "diff4mm"),
    # Table 5's ablation: the paper replaces the inpainter by a median filter (79.0 -> 74.8 tumor Dice)
    Arm("m", "m_diff4mm_medianfill", "(m) Diff4MM, median-filled normal CTs (Table 5 ablation)", False, "diff4mm",
        normal_fill="median"),
)
ARM_BY_KEY = {a.key: a for a in ARMS}
ARM_BY_METHOD = {a.method: a for a in ARMS}
# paired differences reported, first minus second: Diff4MM against both baselines (issue #14: (c) − (b) and
# (c) − (a)), multi- against single-phase, and the Table 5 ablation
PAIRS = (("c", "b"), ("c", "a"), ("b", "a"), ("c", "m"))
MEDIAN_FILL_SUFFIX = "MedianFill"  # arm (m)'s trainer: <Diff4MM trainer>MedianFill, so its results folder differs


def arm_trainer(arm: Arm, baseline_trainer: str, diff4mm_trainer: str) -> str:
    if arm.role == "baseline":
        return baseline_trainer
    return diff4mm_trainer + (MEDIAN_FILL_SUFFIX if arm.normal_fill else "")

# Table 2's protocol (paper, zero-shot single-phase test): every multi-phase model also predicts the test cases with
# the reference phase copied into all its channels; those rows carry the arm's method plus this suffix.
REFCOPY_SUFFIX = "_refcopy"


def refcopy_method(method: str) -> str:
    return f"{method}{REFCOPY_SUFFIX}"


UNREGISTERED_WORDS = "unregistered phases (identity resampling)"


def method_labels(registered: bool = True) -> dict[str, str]:
    """per_case.csv method -> label, the Table 2 rows after the arms. `registered=False` (a dataset written by
    `diff4mm_register --no-registration`, Table 3's unregistered control) names the phases as they are."""
    labels = {a.method: a.label if registered else a.label.replace("registered phases", UNREGISTERED_WORDS)
              for a in ARMS}
    # "(b-T2) ...": the first word is the short label of comparisons and plots
    labels.update({refcopy_method(a.method): f"({a.key}-T2) {labels[a.method].split(' ', 1)[1]}, tested with the "
                                             "reference phase in every channel (Table 2)" for a in ARMS if not a.derived})
    return labels


def reported_pairs() -> list[tuple[str, str]]:
    pairs = [(ARM_BY_KEY[x].method, ARM_BY_KEY[y].method) for x, y in PAIRS]
    return pairs + [(refcopy_method(ARM_BY_KEY["c"].method), refcopy_method(ARM_BY_KEY["b"].method))]


@dataclass(frozen=True)
class Preset:
    name: str
    plans: str
    baseline_trainer: str
    diff4mm_trainer: str
    tta: bool
    device: str
    # arguments of diff4mm_train_inpainter and diff4mm_train_synthesizer for arm (c)'s per-job models
    inpainter_args: tuple[str, ...] = ()
    synthesizer_args: tuple[str, ...] = ()
    configuration: str = CONFIGURATION
    reference_copy_eval: bool = False  # also test multi-phase models with the reference phase in every channel


PRESETS = {
    # CPU: the demo's tiny inpainter and a short default-preset synthesizer (docs/decisions.md, Evidence)
    "cpu": Preset("cpu", "Diff4MMCPUPlans", "nnUNetTrainer_Diff4MMDemo", "Diff4MMTrainer_Demo", tta=False,
                  device="cpu", inpainter_args=("--preset", "tiny", "--epochs", "6"),
                  synthesizer_args=("--preset", "cpu", "--epochs", "20")),
    # CPU evidence: the 2d configuration of the CPU plans, on the 80 x 25 schedule chosen on a validation fold's
    # curve (benchmarks/schedule_curve.py; 50 x 25 found tumors with 3 labelled cases but not with 19:
    # docs/decisions.md, Evidence), the cpu inpainter and a half-length cpu synthesizer per job. The 50 x 25
    # trainers (nnUNetTrainer_Diff4MMEvidence, Diff4MMTrainer_Evidence) reproduce the earlier runs via --trainers.
    "evidence": Preset("evidence", "Diff4MMCPUPlans", "nnUNetTrainer_Diff4MMEvidenceLong",
                       "Diff4MMTrainer_EvidenceLong",
                       tta=False, device="cpu", inpainter_args=("--preset", "cpu"),
                       synthesizer_args=("--preset", "cpu", "--epochs", "10"), configuration="2d",
                       reference_copy_eval=True),
    # GPU: nnU-Net's own plans and trainers (1000 epochs), the gpu model presets, mirroring on
    "gpu": Preset("gpu", "nnUNetPlans", "nnUNetTrainer", "Diff4MMTrainer", tta=True, device="auto",
                  inpainter_args=("--preset", "gpu"), synthesizer_args=("--preset", "gpu"), reference_copy_eval=True),
}
# the name the "gpu" preset had until 2026-12 (one vocabulary across commands, issue #19); accepted for a release
LEGACY_PRESETS = {"default": "gpu"}


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
    configuration: str | None = None  # None: the preset's
    inpainter_args: tuple[str, ...] | None = None  # None: the preset's (diff4mm_train_inpainter arguments)
    synthesizer_args: tuple[str, ...] | None = None  # None: the preset's (diff4mm_train_synthesizer arguments)
    reference_copy_eval: bool | None = None  # None: the preset's (Table 2's protocol)


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


def dataset_is_registered(raw_folder: Path) -> bool:
    """False for a dataset `diff4mm_register --no-registration` wrote (its settings.json records no stage); True
    for a registered one and for datasets this package did not write (nothing says otherwise)."""
    from registration.nnunet_raw import QA_SUBFOLDER
    from registration.register import RegistrationSettings

    try:
        stored = json.loads((Path(raw_folder) / QA_SUBFOLDER / "settings.json").read_text(encoding="utf-8"))
        return RegistrationSettings.from_json(stored["settings"]).registers
    except (OSError, ValueError, KeyError, TypeError):
        return True


def reference_channel(dataset_json: dict, reference_phase: str | None = None) -> tuple[int, str]:
    """(channel index, phase name) of the reference phase: the given name, else dataset.json's
    "diff4mm"."reference"; looked up in "diff4mm"."phases" (datasets written by diff4mm_register, whose
    channel_names are all "CT") or else in channel_names (datasets named by phase)."""
    extra = dataset_json.get("diff4mm") or {}
    names = {int(k): v for k, v in dataset_json.get("channel_names", dataset_json.get("modality", {})).items()}
    phase = reference_phase or extra.get("reference")
    if phase is None:
        raise BenchmarkError("dataset.json names no reference phase (\"diff4mm\": {\"reference\": ...}); "
                             "pass --reference")
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


