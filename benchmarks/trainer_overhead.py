"""Epoch-time overhead of Diff4MMTrainer over nnUNetTrainer with the same plans, from one run.

Trains both short-schedule arms (nnUNetTrainer_Diff4MMDemo and Diff4MMTrainer_Demo, identical schedule) with
nnU-Net's own command, unless their results already exist (e.g. from the demo's benchmark), then reads the
per-epoch times and synthesis times from nnU-Net's training logs and prints them side by side.
Goal on CPU: ratio <= 1.15.

    python benchmarks/trainer_overhead.py -d 501 [--plans Diff4MMCPUPlans] [--fold 0] [--train [--device cuda]]
(with nnUNet_raw / nnUNet_preprocessed / nnUNet_results set, e.g. to the demo's folders under demo_output/)
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

BASELINE, DIFF4MM = "nnUNetTrainer_Diff4MMDemo", "Diff4MMTrainer_Demo"


def _fold_folder(dataset: str, trainer: str, plans: str, fold: str) -> Path:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(int(dataset) if dataset.isdigit() else dataset)
    return Path(os.environ["nnUNet_results"]) / name / f"{trainer}__{plans}__3d_fullres" / f"fold_{fold}"


def epoch_times(folder: Path) -> tuple[list[float], list[float]]:
    """(epoch times in s, synthesis s/sample per epoch) from the newest training log of a fold."""
    logs = sorted(folder.glob("training_log_*.txt"))
    if not logs:
        raise SystemExit(f"{folder}: no training log; run with --train")
    text = logs[-1].read_text(encoding="utf-8")
    times = [float(t) for t in re.findall(r"Epoch time: ([\d.]+) s", text)]
    synth = [float(t) for t in re.findall(r"synthesised this epoch at ([\d.]+) s/sample", text)]
    return times, synth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--plans", default="Diff4MMCPUPlans")
    p.add_argument("--fold", default="0")
    p.add_argument("--train", action="store_true", help="train both arms now (back to back) if not finished")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="nnUNetv2_train -device (with --train)")
    args = p.parse_args(argv)
    for trainer in (BASELINE, DIFF4MM):
        folder = _fold_folder(args.dataset, trainer, args.plans, args.fold)
        if args.train and not (folder / "checkpoint_final.pth").is_file():
            subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_train"), args.dataset, "3d_fullres",
                            args.fold, "-tr", trainer, "-p", args.plans, "-device", args.device], check=True)
    base, _ = epoch_times(_fold_folder(args.dataset, BASELINE, args.plans, args.fold))
    ours, synth = epoch_times(_fold_folder(args.dataset, DIFF4MM, args.plans, args.fold))
    # epoch 0 carries start-up work (worker spawn, first compile/caches) in both arms: compare the rest
    b, o = statistics.mean(base[1:] or base), statistics.mean(ours[1:] or ours)
    print(f"{'trainer':<28}{'epochs':>7}{'s/epoch (mean, epochs 1..)':>30}{'synthesis s/sample':>22}")
    print(f"{BASELINE:<28}{len(base):>7}{b:>30.2f}{'-':>22}")
    print(f"{DIFF4MM:<28}{len(ours):>7}{o:>30.2f}{(statistics.mean(synth) if synth else float('nan')):>22.2f}")
    print(f"epoch-time ratio Diff4MM / nnU-Net: {o / b:.3f}  (goal <= 1.15 on CPU)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
