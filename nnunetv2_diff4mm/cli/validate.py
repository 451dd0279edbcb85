"""``diff4mm_validate``: check a multi-phase input folder before running anything on it. Writes nothing."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import SimpleITK as sitk

from registration.inputs import DEFAULT_PHASES, DEFAULT_REFERENCE, validate_dataset

from .arg_types import at_least_one
from .errors import add_common_arguments, reported_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff4mm_validate",
        description=(
            "Validate a multi-phase liver CT input folder (INPUT/<case>/<PHASE>.nii.gz or DICOM folder <PHASE>/, "
            "optional label.nii.gz on the reference grid with 0 background, 1 liver, 2 tumor). Reads every file, "
            "reports the first problem as one line naming the case and file, and writes nothing."
        ),
    )
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="folder with one sub-folder per case")
    parser.add_argument(
        "--phases", nargs="+", default=list(DEFAULT_PHASES), metavar="PHASE",
        help=f"phase names = file stems expected in every case (default: {' '.join(DEFAULT_PHASES)})",
    )
    parser.add_argument(
        "--reference", default=DEFAULT_REFERENCE,
        help=f"phase whose grid the label must be on; must be one of --phases (default: {DEFAULT_REFERENCE})",
    )
    parser.add_argument(
        "-np", "--num-processes", type=at_least_one, default=1, metavar="N",
        help="validate N cases in parallel processes (default: 1)",
    )
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_validate")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # ITK prints its own multi-line warnings to stderr; the validator reports problems itself, as one line.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    cases = validate_dataset(args.input_dir, args.phases, args.reference, args.num_processes)
    labelled = sum(case.is_labelled for case in cases)
    print(f"OK: {len(cases)} cases ({labelled} labelled, {len(cases) - labelled} test) in {args.input_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
