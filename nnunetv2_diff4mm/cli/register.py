"""``diff4mm_register``: stage 1, register every phase to the reference phase and write an nnU-Net raw dataset."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import SimpleITK as sitk

from registration.inputs import DEFAULT_PHASES, DEFAULT_REFERENCE
from registration.nnunet_raw import (FLAGGED_EXIT_CODE, MIN_REGION_INSIDE, MIN_RELATIVE_SIMILARITY, MIN_SIMILARITY,
                                     RegistrationFlaggedError, nnunet_roots_from_env, run_summary,
                                     write_registered_dataset)
from registration.register import RegistrationSettings

from ..visualization import registration_montage
from .arg_types import SHARD_HELP, at_least_one, shard
from .errors import add_common_arguments, add_device_argument, reported_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff4mm_register",
        description="Register every phase of every case to the reference phase, focused on the liver (rigid -> "
                    "affine -> B-spline, Mattes mutual information inside the dilated reference liver; body mask "
                    "for unlabelled cases), and write $nnUNet_raw/DatasetXXX_NAME (imagesTr, labelsTr, imagesTs, "
                    "dataset.json) with per-case QA, transforms and montages under DatasetXXX_NAME/diff4mm/"
                    "registration/. All cases are validated before anything is written; re-running skips "
                    "cases whose input files (by content) and settings are unchanged, redoes changed ones and "
                    "removes the outputs of cases gone from the input. One run at a time per dataset (a lock "
                    "file .diff4mm_register.lock in it).")
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="multi-phase input folder (see diff4mm_validate)")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, metavar="ID",
                        help="nnU-Net dataset ID, 1..999, not used by another dataset name in $nnUNet_raw, "
                             "$nnUNet_preprocessed or $nnUNet_results")
    parser.add_argument("-n", "--name", required=True, help="dataset name (DatasetID_NAME)")
    parser.add_argument("--phases", nargs="+", default=list(DEFAULT_PHASES), metavar="PHASE",
                        help=f"phases = channel order _0000.. (default: {' '.join(DEFAULT_PHASES)})")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE,
                        help=f"annotated phase every other phase is registered to (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--nnunet-raw", default=None, metavar="DIR",
                        help="nnU-Net raw folder (default: $nnUNet_raw)")
    stages = parser.add_mutually_exclusive_group()
    stages.add_argument("--no-bspline", action="store_true", help="stop after the affine stage (faster, rigid "
                        "organs only)")
    stages.add_argument("--no-registration", action="store_true",
                        help="do not register: resample every phase onto the reference grid as acquired (scanner "
                             "coordinates, identity transform). The unregistered control of the benchmark (the "
                             "paper's claim that aligned synthetic data removes the need for registration); the QA "
                             "still measures each phase's similarity, so expect flagged phases and pass "
                             "--allow-failed")
    parser.add_argument("--first-pass-model", default=None, metavar="MODEL_FOLDER",
                        help="register the unlabelled cases (imagesTs) inside the liver this trained model finds "
                             "on their unregistered phases, as diff4mm_predict does, instead of the body mask "
                             "(which also holds the spine: less accurate): a model folder "
                             "$nnUNet_results/DatasetXXX_NAME/<trainer>__<plans>__<configuration> of the same "
                             "phase order. A <REF>_liver file in a case folder still wins; a case where it finds "
                             "no liver uses the body mask (warning, recorded in qa.json). Re-running with it "
                             "re-registers only the unlabelled cases")
    parser.add_argument("--first-pass-folds", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD",
                        help="folds of --first-pass-model to ensemble (default 0 1 2 3 4, as nnUNetv2_predict; "
                             "'all' for a model trained with fold all)")
    add_device_argument(parser, ("cpu", "cuda", "mps", "auto"), default="auto",
                        help="torch device of --first-pass-model (default auto: cuda if available, else cpu)")
    parser.add_argument("--no-montages", action="store_true", help="skip the per-case QA PNGs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset made from another input or with other settings: only "
                             "this stage's outputs are replaced (imagesTr, labelsTr, the imagesTs files it wrote, "
                             "dataset.json, diff4mm/registration/); every other file stays, and later stages' "
                             "outputs (diff4mm/normal, and diff4mm/inpainter, diff4mm/synthesizer under "
                             "$nnUNet_results) are kept with a warning, as they were made from the old registration")
    parser.add_argument("--allow-failed", action="store_true",
                        help="write dataset.json even if the registration QA flags phases (similarity to the "
                             f"reference below {MIN_SIMILARITY} or below {MIN_RELATIVE_SIMILARITY} x the case's best "
                             f"phase, or less than {100 * MIN_REGION_INSIDE:.0f} %% of the reference liver inside the "
                             "phase's scan: the phase was not aligned, e.g. its header origin is far off). Without "
                             "it such a run writes every case and the QA (flagged "
                             "phases in summary.csv and qa.json), but no dataset.json, and exits with code "
                             f"{FLAGGED_EXIT_CODE}")
    parser.add_argument("-np", "--num-processes", type=at_least_one, default=1, metavar="N",
                        help="cases registered in parallel (default 1)")
    parser.add_argument("--shard", type=shard, default=None, metavar="I/N", help=SHARD_HELP + "; writes "
                        "dataset.json only then")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_register", exit_codes={RegistrationFlaggedError: FLAGGED_EXIT_CODE})
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    raw = args.nnunet_raw or os.environ.get("nnUNet_raw")
    if not raw:
        parser.error("set $nnUNet_raw or pass --nnunet-raw")
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    first_pass = None
    if args.first_pass_model is not None:  # checked (one line) before any case is read
        from ..inference.first_pass import ModelFirstPass

        first_pass = ModelFirstPass.open(args.first_pass_model, args.phases, args.reference,
                                         args.first_pass_folds, device=args.device)
    settings = RegistrationSettings()
    if args.no_bspline:
        settings = settings.without_bspline()
    if args.no_registration:
        settings = settings.without_registration()
    target = write_registered_dataset(args.input_dir, args.dataset_id, args.name, raw, args.phases,
                                      args.reference, args.num_processes, args.overwrite, settings,
                                      montage_fn=None if args.no_montages else registration_montage,
                                      other_roots=nnunet_roots_from_env(),
                                      allow_failed=args.allow_failed, shard=args.shard, first_pass=first_pass)
    if args.shard is None:
        line = run_summary(target / "diff4mm" / "registration" / "summary.csv")
        if line:
            print(line)
        print(f"nnU-Net raw dataset: {target} (QA in {target / 'diff4mm' / 'registration'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
