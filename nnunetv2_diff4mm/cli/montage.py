"""``diff4mm_montage``: PNG of one case's phases side by side (axial and coronal, same physical slice)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from registration.inputs import DEFAULT_PHASES, DEFAULT_REFERENCE, InputError, find_cases, load_case, read_image

from ..visualization import montage
from .errors import add_common_arguments, reported_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff4mm_montage",
        description="Draw the phases of one input case side by side at the same physical slice (through the "
                    "largest tumor, else the liver), with liver (green) and tumor (red) contours of the label, "
                    "in the abdominal window L50/W400. Phases are not registered for display, so breathing "
                    "misalignment shows.")
    parser.add_argument("case_dir", metavar="CASE_DIR", help="one case folder of the multi-phase input layout")
    parser.add_argument("-o", "--output", required=True, metavar="PNG", help="PNG file to write")
    parser.add_argument("--phases", nargs="+", default=list(DEFAULT_PHASES), metavar="PHASE",
                        help=f"phases to show, in order (default: {' '.join(DEFAULT_PHASES)})")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE,
                        help=f"phase whose grid is used for display (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--prediction", metavar="SEG", default=None,
                        help="a segmentation to draw dashed beside the label (1 liver yellow, 2 tumor magenta), e.g. "
                             "diff4mm_predict's OUTPUT/<case>.nii.gz; it is shown at its physical position")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_montage")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    case_dir = Path(args.case_dir)
    if (case_dir / "dataset.json").is_file() or (case_dir / "imagesTr").is_dir():
        raise InputError(f"{case_dir}: is an nnU-Net raw dataset folder, not a case folder; pass one case folder of "
                         "the input layout, e.g. INPUT/case_001 holding that case's phase files")
    matches = [c for c in find_cases(case_dir.parent, args.phases, args.reference) if c.name == case_dir.name]
    if not matches:
        raise InputError(f"{case_dir}: not a case folder")
    images, label = load_case(matches[0])
    prediction = None
    if args.prediction is not None:
        prediction = read_image(Path(args.prediction), name=args.prediction)
        if prediction.GetNumberOfComponentsPerPixel() != 1 or prediction.GetDimension() != 3:
            raise InputError(f"{args.prediction}: not a 3D segmentation (one value per voxel)")
    out = montage(images, label, args.output, title=case_dir.name, reference=args.reference, prediction=prediction)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
