"""Learning curve of the CPU-sized nnU-Net on a validation fold: after how many iterations does it find tumors?

Trains arm (b) (nnU-Net on all registered phases) with ``nnUNetTrainer_Diff4MMCurve`` (80 epochs x 25 iterations,
10 validation batches per epoch) on one fold of a registered, CPU-planned dataset, through ``nnUNetv2_train``, and
reads nnU-Net's own training log: per epoch the validation pseudo-Dice of every class and the epoch time. At the
end nnU-Net's final validation gives the real Dice on the fold's validation cases (``validation/summary.json``).
Only validation cases are used: this curve chooses the evidence schedule, the test cases stay untouched.

    python benchmarks/schedule_curve.py -d 601 -c 3d_fullres -f 0 -o curve_3d      # resumes (nnU-Net's --c)

Writes OUT/curve.csv (epoch, iterations, seconds, pseudo-Dice per class), OUT/curve.png and prints the iterations
at which the tumor pseudo-Dice first reaches 0.5 (and its running mean over 5 epochs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

TRAINER = "nnUNetTrainer_Diff4MMCurve"
ITERATIONS_PER_EPOCH = 25


def parse_training_log(text: str) -> list[dict]:
    """[{epoch, seconds, dice: [per foreground class]}] from nnU-Net's training_log_*.txt."""
    rows, current = [], None
    for line in text.splitlines():
        m = re.search(r"Epoch (\d+)\s*$", line)
        if m:
            current = {"epoch": int(m.group(1))}
            continue
        if current is None:
            continue
        m = re.search(r"Pseudo dice \[(.*)\]", line)
        if m:
            current["dice"] = [float(v) for v in re.findall(r"([0-9.]+(?:e-?\d+)?)\)?(?:,|$)", m.group(1).replace(" ", ""))]
        m = re.search(r"Epoch time: ([0-9.]+) s", line)
        if m and "dice" in current:
            current["seconds"] = float(m.group(1))
            rows.append(current)
            current = None
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (registered, CPU-planned)")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="nnU-Net configuration (default 3d_fullres)")
    parser.add_argument("-f", "--fold", default="0", help="nnU-Net fold (default 0)")
    parser.add_argument("-p", "--plans", default="Diff4MMCPUPlans", help="plans identifier (default Diff4MMCPUPlans)")
    parser.add_argument("-tr", "--trainer", default=TRAINER, help=f"trainer (default {TRAINER})")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for curve.csv and curve.png")
    parser.add_argument("--parse-only", action="store_true", help="only read the existing training log")
    args = parser.parse_args(argv)

    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(args.dataset)
    fold_dir = (Path(os.environ["nnUNet_results"]) / name / f"{args.trainer}__{args.plans}__{args.configuration}"
                / f"fold_{args.fold}")
    if not args.parse_only and not (fold_dir / "checkpoint_final.pth").is_file():
        cmd = [str(Path(sys.executable).parent / "nnUNetv2_train"), name, args.configuration, args.fold, "-tr",
               args.trainer, "-p", args.plans, "-device", "cpu"]
        if (fold_dir / "checkpoint_latest.pth").is_file():
            cmd.append("--c")
        subprocess.run(cmd, check=True)
    rows = []
    for log in sorted(fold_dir.glob("training_log_*.txt")):
        rows += parse_training_log(log.read_text(encoding="utf-8", errors="replace"))
    rows = list({r["epoch"]: r for r in rows}.values())  # a resumed run repeats nothing, keep the last
    args.output.mkdir(parents=True, exist_ok=True)
    n_classes = max((len(r["dice"]) for r in rows), default=0)
    with open(args.output / "curve.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "iterations", "seconds", *[f"pseudo_dice_class{k + 1}" for k in range(n_classes)]])
        for r in rows:
            w.writerow([r["epoch"], (r["epoch"] + 1) * ITERATIONS_PER_EPOCH, r["seconds"], *r["dice"]])
    summary = fold_dir / "validation" / "summary.json"
    if summary.is_file():
        per_class = json.loads(summary.read_text(encoding="utf-8"))["mean"]
        print("final validation Dice (nnU-Net, full validation cases):",
              {k: round(v["Dice"], 3) for k, v in per_class.items()})
    tumor = [r["dice"][-1] for r in rows]
    first = next(((r["epoch"] + 1) * ITERATIONS_PER_EPOCH for r in rows if r["dice"][-1] >= 0.5), None)
    smooth = [sum(tumor[max(0, i - 4): i + 1]) / len(tumor[max(0, i - 4): i + 1]) for i in range(len(tumor))]
    first_smooth = next(((rows[i]["epoch"] + 1) * ITERATIONS_PER_EPOCH for i, v in enumerate(smooth) if v >= 0.5),
                        None)
    print(f"{len(rows)} epochs; mean epoch time {sum(r['seconds'] for r in rows) / max(1, len(rows)):.1f} s; "
          f"tumor pseudo-Dice >= 0.5 first after {first} iterations, 5-epoch mean >= 0.5 after {first_smooth}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        its = [(r["epoch"] + 1) * ITERATIONS_PER_EPOCH for r in rows]
        for k, label in enumerate(["liver", "tumor"][:n_classes]):
            ax.plot(its, [r["dice"][k] for r in rows], label=f"{label} pseudo-Dice")
        ax.plot(its, smooth, "--", label="tumor, 5-epoch mean")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_xlabel("training iterations")
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} {args.configuration} fold {args.fold} ({args.plans})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.output / "curve.png", dpi=110)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
