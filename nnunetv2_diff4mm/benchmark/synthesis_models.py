"""Arm (c)'s models, trained per job on that job's labelled training cases only.

A job trains nnU-Net on the "train" list of one entry F of splits_final.json (a fold, or a labelled-fraction
subset of it). Its inpainter, normal CTs and synthesis bundle are trained with the same `-f F`, through the
plugin's own commands, into the per-fold folders where Diff4MMTrainer on fold F looks first
(``nnUNet_results/DATASET/diff4mm/{inpainter,synthesizer}_foldF``, ``nnUNet_raw/DATASET/diff4mm/normal_foldF``).
So arm (c) never sees a validation case, a test case, or a labelled case withheld from arms (a) and (b) at that
fraction; the trainer's leak check (training/leakage.py) refuses to start otherwise. Every command resumes, so a
re-run of a finished job redoes nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .. import conventions
from .common import BenchmarkError, Job


def synthesis_models_finished(raw_folder: Path, fold: int, results_root: Path | None = None) -> bool:
    from synthesis.bundle import BUNDLE_JSON

    return (conventions.bundle_folder(raw_folder, fold, results_root) / BUNDLE_JSON).is_file()


def prepare_synthesis_models(job: Job, raw_folder: Path, args: tuple[tuple[str, ...], tuple[str, ...]], device: str,
                             log_dir: Path, runner, env: dict | None = None, results_root: Path | None = None) -> str:
    """Train the job's inpainter, write its normal CTs and train its bundle (each skipped when finished), with
    `args` = (diff4mm_train_inpainter arguments, diff4mm_train_synthesizer arguments); "reused" or "trained"."""
    for var in (conventions.ENV_BUNDLE, conventions.ENV_NORMAL):
        if (env or {}).get(var):
            raise BenchmarkError(f"${var} is set: arm (c) trains its own models per fold; unset it")
    fold = job.nnunet_fold
    if synthesis_models_finished(raw_folder, fold, results_root):
        return "reused"
    dataset = ["-d", raw_folder.name, "-f", str(fold)]
    log = Path(log_dir) / f"synthesis_models_{job.key.replace('/', '_')}.log"
    for module, extra in (("train_inpainter", [*args[0], "--device", device]), ("inpaint", ["--device", device]),
                          ("train_synthesizer", [*args[1], "--device", device])):
        runner([sys.executable, "-m", f"nnunetv2_diff4mm.cli.{module}", *dataset, *extra], log, env)
    if not synthesis_models_finished(raw_folder, fold, results_root):
        bundle = conventions.bundle_folder(raw_folder, fold, results_root)
        raise BenchmarkError(f"{bundle}: diff4mm_train_synthesizer ended without a bundle (log {log})")
    return "trained"


def prepare_classical_normals(job: Job, raw_folder: Path, method: str, log_dir: Path, runner,
                              env: dict | None = None) -> Path:
    """Normal CTs of the job's training cases filled by `method` (diff4mm_inpaint --method; no model, so nothing
    to leak) in DATASET/diff4mm/normal_<method>_foldF; skipped when its normal.json exists. Returns the folder."""
    from synthesis.normal_dataset import RECORD

    fold = job.nnunet_fold
    folder = Path(raw_folder) / conventions.SUBFOLDER / f"normal_{method.replace('+', '_')}_fold{fold}"
    if not (folder / RECORD).is_file():
        log = Path(log_dir) / f"normal_{method}_{job.key.replace('/', '_')}.log"
        runner([sys.executable, "-m", "nnunetv2_diff4mm.cli.inpaint", "-d", raw_folder.name, "-f", str(fold),
                "--method", method, "-o", str(folder)], log, env)
        if not (folder / RECORD).is_file():
            raise BenchmarkError(f"{folder}: diff4mm_inpaint --method {method} ended without {RECORD} (log {log})")
    return folder
