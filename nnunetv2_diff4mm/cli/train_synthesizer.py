"""``diff4mm_train_synthesizer``: train the multi-phase tumor synthesizer (autoencoder + latent diffusion) on a
registered nnU-Net raw dataset with its normal (tumor-free) CTs, and write a synthesis bundle."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .arg_types import add_preset_argument
from .case_args import add_case_arguments
from .errors import add_common_arguments, add_device_argument, reported_errors

PROG = "diff4mm_train_synthesizer"
# mirrors synthesis.training.PRESETS (torch import), not imported so that --help stays fast;
# tests/test_cli_consistency.py checks that they agree
PRESET_NAMES = ("tiny", "cpu", "gpu")
LEGACY_PRESET_NAMES = {"default": "cpu"}


def resolve_raw_dataset(dataset: str) -> Path:
    """`501` or `Dataset501_Name` -> $nnUNet_raw/Dataset501_Name (DatasetError if it does not exist)."""
    from synthesis.dataset_io import DatasetError

    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise DatasetError("$nnUNet_raw: not set, so no dataset can be found; export nnUNet_raw=/path/to/nnUNet_raw "
                           "(the folder holding DatasetXXX_Name)")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError, AssertionError):
        raise DatasetError(f"{raw}: no dataset {dataset!r} (give an id like 501 or a name like "
                           "Dataset501_Liver)") from None
    path = Path(raw) / name
    if not path.is_dir():
        raise DatasetError(f"{path}: no such dataset folder")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train the Diff4MM tumor synthesizer on $nnUNet_raw/DatasetXXX (registered phases in imagesTr, "
                    "labels in labelsTr, normal CTs from diff4mm_inpaint in diff4mm/normal/) and write a bundle "
                    "folder (diff4mm_bundle.json + autoencoder/ unet/ scheduler/ safetensors). Re-running resumes "
                    "an interrupted training; a finished one is left as is.")
    parser.add_argument("-d", "--dataset", required=True, metavar="ID",
                        help="dataset id or name, e.g. 501 or Dataset501_Liver (under $nnUNet_raw)")
    parser.add_argument("-o", "--output", metavar="BUNDLE_DIR", default=None,
                        help="bundle folder to write (default: $nnUNet_results/DATASET/diff4mm/synthesizer, or "
                             "synthesizer_foldFOLD with --fold, where Diff4MMTrainer looks)")
    parser.add_argument("--normal", metavar="NORMAL_DIR", default=None,
                        help="normal CTs from diff4mm_inpaint (default: DATASET/diff4mm/normal_foldFOLD with --fold "
                             "if it exists, else DATASET/diff4mm/normal)")
    add_preset_argument(parser, PRESET_NAMES, LEGACY_PRESET_NAMES, "cpu",
                        help="model/ROI size: tiny (tests, 16^3 at 6 mm), cpu (32^3 at 3 mm, ~37 min on one core), "
                             "gpu (64^3 at 1.5 mm) (default: cpu; 'default' is the old name of cpu)")
    add_device_argument(parser, ("cpu", "cuda", "auto"), default="auto", help="default: auto")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="epochs of each stage (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_case_arguments(parser, "train")
    add_common_arguments(parser)
    return parser


@reported_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    from synthesis.dataset_io import DatasetError, dataset_phases, labelled_cases, load_training_cases
    from synthesis.normal_dataset import normal_lineage
    from synthesis.training import train_synthesizer

    from .. import conventions
    from ..splits import selected_training_cases

    dataset_dir = resolve_raw_dataset(args.dataset)
    if args.cases and not args.output:
        raise DatasetError("--cases needs -o/--output (the default folders are per fold)")
    output = args.output or conventions.bundle_folder(dataset_dir, args.fold)
    normal = (Path(args.normal) if args.normal else
              conventions.fold_or_shared(conventions.normal_folder, dataset_dir, args.fold))
    selected = selected_training_cases(dataset_dir, labelled_cases(dataset_dir), args.fold, args.cases)
    names, cases = load_training_cases(dataset_dir, selected, normal)
    lineage = normal_lineage(normal)
    bundle = train_synthesizer(cases, output, preset=args.preset, device=args.device, epochs=args.epochs,
                               seed=args.seed, case_names=names,
                               lineage_cases=sorted(lineage) if lineage is not None else None,
                               source={"dataset": dataset_dir.name, "phases": dataset_phases(dataset_dir),
                                       "normal_dir": normal.name})
    print(f"synthesis bundle: {bundle} (trained on {len(names)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
