"""``diff4mm_train_inpainter``: train the multi-phase FFC inpainter on the healthy liver of a dataset."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arg_types import add_preset_argument
from .case_args import add_case_arguments
from .errors import add_common_arguments, add_device_argument, reported_errors
from .train_synthesizer import resolve_raw_dataset

# mirrors synthesis.inpainting.PRESETS (torch import), not imported so that --help stays fast;
# tests/test_cli_consistency.py checks that they agree
PRESET_NAMES = ("tiny", "cpu", "gpu")
LEGACY_PRESET_NAMES = {"default": "cpu"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff4mm_train_inpainter",
        description="Train the FFC inpainting network (all phases jointly) on tumor-free liver of the labelled "
                    "cases of a registered nnU-Net raw dataset, with random liver-shaped holes. Weights are saved "
                    "as safetensors with their config; re-running resumes after the last finished epoch.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name under $nnUNet_raw")
    parser.add_argument("-o", "--output", metavar="MODEL_DIR",
                        help="model folder (default: $nnUNet_results/DATASET/diff4mm/inpainter, or inpainter_foldFOLD "
                             "with --fold, where diff4mm_inpaint looks)")
    add_preset_argument(parser, PRESET_NAMES, LEGACY_PRESET_NAMES, "cpu",
                        help="model and training size: tiny (tests, seconds), cpu (~4 min on one core), gpu "
                             "(1.5 x 1.5 x 2.5 mm grid, one GPU) (default: cpu; 'default' is the old name of cpu)")
    parser.add_argument("--epochs", type=int, help="number of epochs (default: the preset's)")
    add_device_argument(parser, ("cpu", "cuda", "auto"), default="auto",
                        help="training device (default auto: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_case_arguments(parser, "train")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_train_inpainter")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from synthesis.dataset_io import DatasetError, labelled_cases, load_case, select_cases
    from synthesis.inpainting import train_inpainter

    from .. import conventions
    from ..splits import selected_training_cases

    raw = resolve_raw_dataset(args.dataset)
    if args.cases and not args.output:
        raise DatasetError("--cases needs -o/--output (the default folders are per fold)")
    out = args.output or str(conventions.inpainter_folder(raw, args.fold))
    names = select_cases(raw, selected_training_cases(raw, labelled_cases(raw), args.fold, args.cases))
    cases = []
    for name in names:
        target, _, label, _ = load_case(raw, name, normal=False)
        cases.append((target, label))
    train_inpainter(cases, out, epochs=args.epochs, device=args.device, seed=args.seed, preset=args.preset,
                    case_names=names)
    print(f"inpainter in {out} (trained on {len(names)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
