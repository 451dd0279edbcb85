"""Training and prediction through nnU-Net's own commands (subprocesses, logged, resumable)."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .common import BenchmarkError, Job


def model_folder(results_root: Path, dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's output folder of a trainer/plans/configuration under `results_root`: nnunetv2's
    get_output_folder with the root passed in (it reads $nnUNet_results itself; the benchmark is given its roots)."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    return Path(results_root) / dataset / convert_trainer_plans_config_to_identifier(trainer, plans, configuration)


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
                num_processes: int, log_dir: Path, runner=run_logged, env: dict | None = None,
                log_name: str | None = None) -> str:
    """Predict `cases` of input_dir with the job's model unless pred_dir already holds them all; "reused" or
    "predicted". Predictions go to a hidden staging folder that is renamed to pred_dir when complete. The log is
    LOG_DIR/<log_name>.log (default predict_<job key>)."""
    pred_dir = Path(pred_dir)
    if predictions_finished(pred_dir, cases, ending):
        return "reused"
    staging = pred_dir.with_name(f".{pred_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [nnunet_command("nnUNetv2_predict"), "-i", str(input_dir), "-o", str(staging), "-d", job.dataset,
           "-c", job.configuration, "-f", str(job.nnunet_fold), "-tr", job.trainer, "-p", job.plans,
           "-device", device, "--disable_progress_bar"]
    # one process: nnU-Net's own sequential mode (-npp 0 -nps 0, predict_from_files_sequential), which starts no
    # preprocessing/export workers; with -npp 1 -nps 1 it still spawns two (each importing torch: ~10-15 s per
    # call on the 2-core VM, more than a small test set's prediction)
    workers = str(num_processes) if num_processes > 1 else "0"
    cmd += ["-npp", workers, "-nps", workers]
    if not tta:
        cmd.append("--disable_tta")
    runner(cmd, Path(log_dir) / f"{log_name or 'predict_' + job.key.replace('/', '_')}.log", env)
    if not predictions_finished(staging, cases, ending):
        raise BenchmarkError(f"{staging}: nnUNetv2_predict did not write every test case")
    shutil.rmtree(pred_dir, ignore_errors=True)
    os.replace(staging, pred_dir)
    return "predicted"


def synthesis_disabled(results_root: Path, job: Job) -> bool:
    """True if the Diff4MM trainer logged that it fell back to real samples only."""
    return any("Diff4MM: synthesis disabled" in p.read_text(errors="replace", encoding="utf-8")
               for p in fold_folder(results_root, job).glob("training_log_*.txt"))


