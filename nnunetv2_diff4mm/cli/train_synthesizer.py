"""``diff4mm_train_synthesizer``: train the multi-phase tumor synthesizer (autoencoder + latent diffusion) on a
registered nnU-Net raw dataset with its normal (tumor-free) CTs, and write a synthesis bundle."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from synthesis.bundle import BundleError
from synthesis.dataset_io import DatasetError, load_training_cases
from synthesis.training import PRESETS, train_synthesizer

PROG = "diff4mm_train_synthesizer"


def resolve_raw_dataset(dataset: str) -> Path:
    """`501` or `Dataset501_Name` -> $nnUNet_raw/Dataset501_Name (DatasetError if it does not exist)."""
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise DatasetError("$nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw")
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
    parser.add_argument("-o", "--output", required=True, metavar="BUNDLE_DIR", help="bundle folder to write")
    parser.add_argument("--preset", choices=list(PRESETS), default="default",
                        help="model/ROI size: tiny (tests, 16^3 at 6 mm), default (CPU, 32^3 at 3 mm, ~37 min "
                             "on one core), gpu (64^3 at 1.5 mm) (default: default)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="default: auto")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="epochs of each stage (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    try:
        dataset_dir = resolve_raw_dataset(args.dataset)
        names, cases = load_training_cases(dataset_dir)
        bundle = train_synthesizer(cases, args.output, preset=args.preset, device=args.device, epochs=args.epochs,
                                   seed=args.seed, case_names=names)
    except (DatasetError, BundleError, ValueError, RuntimeError) as err:
        print(f"{PROG}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"synthesis bundle: {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
