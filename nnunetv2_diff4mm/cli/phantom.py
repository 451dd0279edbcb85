"""``diff4mm_phantom``: write the built-in multi-phase liver CT phantom in the multi-phase input layout."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..phantom.config import PhantomConfig
from ..phantom.tissues import MAX_TUMORS
from .arg_types import finite_float, positive_float
from .errors import add_common_arguments, reported_errors


def build_parser() -> argparse.ArgumentParser:
    defaults = PhantomConfig()
    parser = argparse.ArgumentParser(
        prog="diff4mm_phantom",
        description=(
            "Generate synthetic multi-phase (NC, AP, PVP, DELAY) liver CT cases with breathing-like misalignment "
            "between phases, in the layout diff4mm_register reads: OUT/case_XXX/<PHASE>.nii.gz + label.nii.gz "
            "(0 background, 1 liver, 2 tumor, on the PVP grid), OUT/test_XXX/ (held-out, no label) and "
            "OUT/ground_truth/ (aligned phases, true motion, labels of every case). Deterministic by seed; "
            "re-running resumes (finished cases are kept)."
        ),
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (new, empty, or a "
                        "phantom folder made with the same settings, which is then completed)")
    parser.add_argument("--cases", type=int, default=8, metavar="N", help="labelled cases case_000.. (default 8)")
    parser.add_argument("--test-cases", type=int, default=0, metavar="M",
                        help="held-out unlabelled cases test_000.. (labels only in ground_truth/) (default 0)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default 0)")
    parser.add_argument("--spacing", type=positive_float, nargs=3, default=defaults.spacing, metavar=("X", "Y", "Z"),
                        help="voxel size of the reference (PVP) phase in mm; the other phases get their own, "
                             "slightly different voxel sizes (default 3 3 5; use 0.8 0.8 2.5 for a clinical-"
                             "resolution scan, ~20x slower)")
    parser.add_argument("--max-tumors", type=int, default=defaults.max_tumors,
                        help=f"most tumors per case, 0..{MAX_TUMORS} (default {defaults.max_tumors})")
    parser.add_argument("--max-shift-mm", type=finite_float(0, 50), default=defaults.max_shift_mm,
                        help="largest cranio-caudal breathing shift of a phase (default 15)")
    parser.add_argument("--liver-only-phases", nargs="+", default=[], metavar="PHASE",
                        choices=("NC", "AP", "DELAY"),
                        help="these phases are liver-only scans: they cover only a cranio-caudal slab of "
                             "--liver-only-extent-mm around the liver, so part of the liver is outside their field "
                             "of view (default: none, every phase covers the whole body)")
    parser.add_argument("--liver-only-extent-mm", type=positive_float, default=defaults.liver_only_extent_mm,
                        metavar="MM", help=f"length of a liver-only scan (default {defaults.liver_only_extent_mm:g}; "
                                           "the phantom's liver is ~130-170 mm long)")
    parser.add_argument("--local-deformation-mm", type=finite_float(0, 10), default=defaults.local_deformation_mm,
                        metavar="MM", help="std of an extra deformation at organ-part scale in every moving phase "
                                           "(default 0: none; e.g. 3)")
    parser.add_argument("--local-deformation-scale-mm", type=finite_float(6, 100),
                        default=defaults.local_deformation_scale_mm, metavar="MM",
                        help=f"its correlation length (default {defaults.local_deformation_scale_mm:g}; 10-30 mm is "
                             "the scale of liver segments)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, metavar="N",
                        help="cases generated in parallel (default 1)")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_phantom")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cases < 0 or args.test_cases < 0 or args.cases + args.test_cases == 0:
        parser.error("--cases and --test-cases must be >= 0 and not both 0")
    if not 0 <= args.max_tumors <= MAX_TUMORS:
        parser.error(f"--max-tumors must be in 0..{MAX_TUMORS}")
    if min(args.spacing) <= 0 or args.max_shift_mm < 0 or args.num_processes < 1:
        parser.error("--spacing must be positive, --max-shift-mm >= 0, -np >= 1")
    config = PhantomConfig(seed=args.seed, spacing=tuple(args.spacing), max_tumors=args.max_tumors,
                           max_shift_mm=args.max_shift_mm, liver_only_phases=tuple(args.liver_only_phases),
                           liver_only_extent_mm=args.liver_only_extent_mm,
                           local_deformation_mm=args.local_deformation_mm,
                           local_deformation_scale_mm=args.local_deformation_scale_mm)
    from ..phantom.dataset import write_phantom_dataset

    names = write_phantom_dataset(args.output, config, args.cases, args.test_cases, args.num_processes)
    print(f"{len(names)} phantom cases in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
