"""``diff4mm_predict``: segment new patients from their raw phases (issue #15). Parses flags, calls the library."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arg_types import at_least_one, finite_float
from .errors import add_common_arguments, add_device_argument, reported_errors

PROG = "diff4mm_predict"
# the library's defaults, repeated here so that --help needs no torch/nnU-Net import
DEFAULT_TRAINER = "Diff4MMTrainer"
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_CONFIGURATION = "3d_fullres"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
DEFAULT_DILATION_MM = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment liver and tumors of new patients from their raw, unregistered phases with a trained "
                    "model (flags as nnUNetv2_predict). Per case: validate the phases against the model's phase "
                    "order, find the liver on the reference phase with the model itself on the unregistered "
                    "phases (body mask if it finds none), register every phase to the reference inside that "
                    "liver as diff4mm_register does, predict with nnU-Net's predictor (all folds, TTA), remove "
                    "tumors outside the liver, and write OUTPUT/<case>.nii.gz on the reference phase's original "
                    "grid, OUTPUT/<case>.json (registration QA, liver and tumor volumes, seconds per step) and "
                    "OUTPUT/<case>.png. A finished case is skipped when the command is run again.")
    parser.add_argument("-i", dest="input", required=True, metavar="INPUT",
                        help="multi-phase input folder (INPUT/<case>/<PHASE>.nii.gz or DICOM folder <PHASE>/, as "
                             "for diff4mm_validate), or one case folder")
    parser.add_argument("-o", dest="output", required=True, metavar="OUTPUT", help="output folder")
    parser.add_argument("-d", dest="dataset", required=True, metavar="ID",
                        help="dataset the model was trained on: ID or name (501 or Dataset501_Liver) under "
                             "$nnUNet_results")
    parser.add_argument("-c", dest="configuration", default=DEFAULT_CONFIGURATION, metavar="CONFIG",
                        help=f"nnU-Net configuration (default {DEFAULT_CONFIGURATION})")
    parser.add_argument("-f", dest="folds", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD",
                        help="folds to ensemble (default 0 1 2 3 4, as nnUNetv2_predict); 'all' for a model "
                             "trained with fold all (datasets of fewer than five cases)")
    parser.add_argument("-tr", dest="trainer", default=DEFAULT_TRAINER,
                        help=f"trainer the model was trained with (default {DEFAULT_TRAINER})")
    parser.add_argument("-p", dest="plans", default=DEFAULT_PLANS,
                        help=f"plans identifier (default {DEFAULT_PLANS}; Diff4MMCPUPlans for diff4mm_plan_cpu)")
    parser.add_argument("-chk", dest="checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"checkpoint file name in each fold folder (default {DEFAULT_CHECKPOINT})")
    add_device_argument(parser, ("cpu", "cuda", "mps", "auto"), default="auto",
                        help="torch device (default auto: cuda if available, else cpu)")
    parser.add_argument("-np", dest="num_processes", type=at_least_one, default=1, metavar="N",
                        help="phases of a case registered in parallel processes (default 1)")
    parser.add_argument("--fill-missing-phases", action="store_true",
                        help="a missing phase (never the reference) is replaced by a copy of the registered "
                             "available phase nearest to it in acquisition order (DELAY -> PVP, NC -> AP, AP -> "
                             "PVP), as the paper duplicates an available phase; recorded in the case's JSON. "
                             "Without it a missing phase is an error naming the case and the phase")
    parser.add_argument("--no-postprocessing", action="store_true",
                        help="keep tumor components outside the predicted liver (default: removed)")
    parser.add_argument("--dilation-mm", type=finite_float(0.0, 100.0), default=DEFAULT_DILATION_MM,
                        metavar="MM", help="post-processing keeps a tumor within this distance of the predicted "
                                           f"liver (default {DEFAULT_DILATION_MM:g})")
    parser.add_argument("--disable_tta", action="store_true",
                        help="no mirroring test-time augmentation (as nnUNetv2_predict; faster, slightly worse)")
    parser.add_argument("--first-pass", choices=("model", "label", "body"), default="model",
                        help="liver mask the registration uses: model (default: the trained model on the "
                             "unregistered phases), label (the case's label.nii.gz: an upper bound for "
                             "evaluation), body (no liver: the body mask). A <REF>_liver.nii.gz in the case folder "
                             "is always used")
    parser.add_argument("--outside-fill", choices=("air", "phase"), default="phase",
                        help="what the model sees where a phase's scan does not reach the reference grid: phase "
                             "(default: the registered values of the nearest phase in acquisition order that "
                             "covers the voxel, as --fill-missing-phases does for a whole phase) or air (-1024 HU, "
                             "as diff4mm_register writes); each phase's outside share is in the case's JSON")
    parser.add_argument("--refine-first-pass", type=int, choices=range(0, 4), default=1, metavar="N",
                        help="with --first-pass model: N rounds (0-3, default 1) of registering inside the "
                             "first-pass liver, segmenting the registered phases and using that liver as the new "
                             "mask, before the final registration (one registration and one prediction more per "
                             "round; 0 is ~40 %% faster, slightly worse on the phantom's validation cases)")
    parser.add_argument("--no-bspline", action="store_true",
                        help="register rigid + affine only (faster; as diff4mm_register --no-bspline, use only "
                             "when the model's dataset was registered that way)")
    parser.add_argument("--no-montages", action="store_true", help="skip the per-case PNG")
    parser.add_argument("--phases", nargs="+", default=None, metavar="PHASE",
                        help="phase order, only for a model whose dataset.json has no 'diff4mm' key (otherwise "
                             "read from the model)")
    parser.add_argument("--reference", default=None, help="reference phase, only with --phases")
    add_common_arguments(parser)
    return parser


@reported_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import SimpleITK as sitk

    from registration.register import RegistrationSettings

    from ..inference.model import find_model_folder, resolve_device
    from ..inference.predict import Diff4MMModel, PredictionSettings, predict_folder

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    folder = find_model_folder(args.dataset, args.trainer, args.plans, args.configuration)
    model = Diff4MMModel.open(folder, args.folds, args.checkpoint, args.device, not args.disable_tta,
                              args.phases, args.reference)
    if resolve_device(args.device).type == "cpu":
        import multiprocessing

        import torch

        torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_predict on a CPU
    registration = RegistrationSettings()
    if args.no_bspline:
        registration = registration.without_bspline()
    settings = PredictionSettings(fill_missing_phases=args.fill_missing_phases, first_pass=args.first_pass,
                                  refine_first_pass=args.refine_first_pass, outside_fill=args.outside_fill,
                                  postprocessing=not args.no_postprocessing, dilation_mm=args.dilation_mm,
                                  tta=not args.disable_tta, registration=registration,
                                  montage=not args.no_montages)
    results = predict_folder(args.input, args.output, model, settings, num_processes=args.num_processes)
    done = sum(not r.skipped for r in results)
    print(f"{len(results)} cases in {args.output}: {done} predicted, {len(results) - done} done before "
          f"(model {folder}, folds {' '.join(map(str, model.info.folds))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
