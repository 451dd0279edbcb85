"""``diff4mm_benchmark``: Diff4MMTrainer against nnU-Net on one dataset (reference phase only, all phases)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..benchmark import ARMS, DERIVED_ID_OFFSET, LEGACY_PRESETS, PRESETS, BenchmarkSettings, run_benchmark
from ..evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM
from .arg_types import add_preset_argument, at_least_one, deprecated_alias, fraction, positive_float
from .errors import add_common_arguments, add_device_argument, reported_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff4mm_benchmark",
        description=(
            "Train, predict and evaluate three arms with identical plans, schedule and folds: (a) nnU-Net on the "
            "reference phase only (a derived raw dataset, ID + 100 by default), (b) nnU-Net on all registered "
            "phases, (c) Diff4MMTrainer. Each arm is trained with nnUNetv2_train at every labelled fraction "
            "(nested subsets of each fold's training cases, stored as extra entries of splits_final.json), "
            "predicts imagesTs with nnUNetv2_predict, and is scored per case (Dice, HD95, NSD for liver and "
            "tumor; tumor detection). Writes OUT/per_case.csv, OUT/summary.md and PNG plots. Resumable: "
            "finished trainings (checkpoint_final.pth) and predictions are reused, so a re-run only re-evaluates."
        ),
    )
    parser.add_argument("-d", "--dataset", required=True, help="nnU-Net dataset ID or name (e.g. 501)")
    parser.add_argument("-o", "--output", default=None, metavar="OUT",
                        help="report folder (default: ./diff4mm_benchmark_<ID>)")
    parser.add_argument("-f", "--folds", type=int, nargs="+", default=[0], metavar="K",
                        help="nnU-Net folds (default 0)")
    parser.add_argument("--fractions", type=fraction, nargs="+", default=[0.25, 0.5, 1.0], metavar="F",
                        help="labelled fractions of each fold's training cases, in (0, 1] (default 0.25 0.5 1)")
    add_preset_argument(parser, tuple(PRESETS), LEGACY_PRESETS, "cpu",
                        help="cpu: plans Diff4MMCPUPlans, trainers nnUNetTrainer_Diff4MMDemo / Diff4MMTrainer_Demo "
                             "(short schedule), test-time mirroring off for CPU speed; evidence: the same plans, "
                             "2d, trainers nnUNetTrainer_Diff4MMEvidenceLong / Diff4MMTrainer_EvidenceLong (80 x 25 "
                             "iterations, chosen on a validation curve on which nnU-Net found the phantom's tumors "
                             "from epoch 31 with 19 labelled cases; docs/decisions.md); gpu: nnUNetPlans, "
                             "nnUNetTrainer / Diff4MMTrainer, mirroring on (default: cpu; 'default' is the old name "
                             "of gpu)")
    parser.add_argument("-c", "--configuration", default=None,
                        help="nnU-Net configuration (default: the preset's, 2d for evidence, else 3d_fullres)")
    parser.add_argument("--trainers", nargs=2, default=None, metavar=("BASELINE", "DIFF4MM"),
                        help="override the preset's trainer classes: baseline for arms a and b, Diff4MM for arm c")
    parser.add_argument("--arms", nargs="+", choices=[a.key for a in ARMS], default=["a", "b", "c"],
                        help="arms to run: a (reference phase only), b (all phases), c (Diff4MM), m (Diff4MM on "
                             "median-filled normal CTs, the Table 5 ablation; its trainer is the Diff4MM trainer's "
                             "name + MedianFill). Default: a b c. Arms c and m train their synthesis models per job")
    refs = parser.add_mutually_exclusive_group(required=True)
    refs.add_argument("--test-labels", type=Path, metavar="DIR",
                      help="folder with the reference label <case><file_ending> of every imagesTs case")
    refs.add_argument("--phantom", type=Path, metavar="DIR",
                      help="phantom folder (diff4mm_phantom) whose ground_truth/<case>/label.nii.gz are the references")
    parser.add_argument("--derived-id", type=int, default=None, metavar="ID",
                        help=f"dataset ID of arm a's reference-phase dataset (default: ID + {DERIVED_ID_OFFSET})")
    parser.add_argument("--reference", dest="reference_phase", default=None, metavar="PHASE",
                        help="reference phase name (default: dataset.json's diff4mm.reference)")
    deprecated_alias(parser, "--reference-phase", "--reference", "reference_phase", metavar="PHASE")
    parser.add_argument("--nsd-tolerance-mm", type=positive_float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                        help=f"surface Dice tolerance in mm (default {DEFAULT_NSD_TOLERANCE_MM:g})")
    add_device_argument(parser, ("cpu", "cuda", "auto"), default=None,
                        help="device for training and inference (default: cpu for --preset cpu, else auto)")
    parser.add_argument("--disable-tta", action="store_true",
                        help="predict without test-time mirroring also in the default preset")
    parser.add_argument("--reference-copy-eval", action=argparse.BooleanOptionalAction, default=None,
                        help="also test every multi-phase model with the reference phase copied into all channels "
                             "(the paper's Table 2 protocol; rows <method>_refcopy). Default: on for the evidence "
                             "and default presets, off for cpu")
    parser.add_argument("-np", "--num-processes", type=at_least_one, default=2, metavar="N",
                        help="worker processes for preprocessing, data augmentation, inference and evaluation "
                             "(default 2)")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_benchmark")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("--fractions must lie in (0, 1]")
    if any(k < 0 for k in args.folds):
        parser.error("-f/--folds must be >= 0")
    if args.nsd_tolerance_mm < 0:
        parser.error("--nsd-tolerance-mm must be >= 0")
    output = Path(args.output or f"diff4mm_benchmark_{args.dataset}")
    settings = BenchmarkSettings(
        dataset=args.dataset, output=output, folds=tuple(args.folds), fractions=tuple(args.fractions),
        preset=args.preset, arms=tuple(args.arms), trainers=tuple(args.trainers) if args.trainers else None,
        test_labels=args.test_labels, phantom=args.phantom, derived_id=args.derived_id,
        reference_phase=args.reference_phase, nsd_tolerance_mm=args.nsd_tolerance_mm,
        num_processes=args.num_processes, device=args.device, configuration=args.configuration,
        tta=False if args.disable_tta else None, reference_copy_eval=args.reference_copy_eval)
    summary = run_benchmark(settings)
    print(f"report: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
