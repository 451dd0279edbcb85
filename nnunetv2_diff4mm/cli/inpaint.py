"""``diff4mm_inpaint``: stage 2, write the normal (tumor-free) phases of every labelled case of a dataset."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arg_types import SHARD_HELP, finite_float, shard
from .case_args import add_case_arguments
from .errors import add_common_arguments, add_device_argument, reported_errors
from .train_synthesizer import resolve_raw_dataset

# mirror synthesis.inpainting's, not imported so that --help stays fast;
# tests/test_cli_consistency.py checks that they agree
CLASSICAL_METHODS = ("median", "median+noise", "harmonic", "harmonic+noise")
DEFAULT_DILATION_MM = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff4mm_inpaint",
        description="Dilate the tumor label (in mm, within the body) of every labelled case of a registered "
                    "nnU-Net raw dataset and inpaint that region in all phases, giving tumor-free 'normal' CTs "
                    "under DATASET/diff4mm/normal/ (nnU-Net naming), with before/after montages and a per-phase "
                    "'no tumor remains' check in normal.json. Resumable.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (e.g. 501 or Dataset501_Liver) "
                        "under $nnUNet_raw, written by diff4mm_register")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="MODEL_DIR", help="trained inpainter (diff4mm_train_inpainter output); "
                        "default: $nnUNet_results/DATASET/diff4mm/inpainter, or inpainter_foldFOLD with --fold")
    source.add_argument("--method", choices=CLASSICAL_METHODS,
                        help="classical fallback instead of a learned model (no training needed)")
    parser.add_argument("--dilation-mm", type=finite_float(0, 100), default=DEFAULT_DILATION_MM,
                        help=f"tumor mask dilation in mm, covering residual misregistration of the other phases "
                             f"and diffuse tumor borders (default {DEFAULT_DILATION_MM:g})")
    parser.add_argument("--structure", choices=("membrane", "learned"), default="membrane",
                        help="learned model: take the fill's coarse structure (5 mm) from the membrane (harmonic) "
                             "fill and its detail from the network (membrane, default: a better structure MAE on the "
                             "phantom, docs/decisions.md) or keep the network's fill as it is (learned)")
    parser.add_argument("--no-grain", action="store_true",
                        help="learned model: do not add the native grain its working grid cannot hold (measured on "
                             "each case's healthy liver; nothing is added on a scan as coarse as that grid)")
    add_device_argument(parser, ("cpu", "cuda", "auto"), default="auto",
                        help="where the model runs (default auto: cuda if available)")
    parser.add_argument("-o", "--output", metavar="NORMAL_DIR", default=None,
                        help="output folder (default: DATASET/diff4mm/normal, or normal_foldFOLD with --fold, "
                             "where diff4mm_train_synthesizer and Diff4MMTrainer look)")
    add_case_arguments(parser, "inpaint")
    parser.add_argument("--shard", type=shard, default=None, metavar="I/N", help=SHARD_HELP + " (normal.json then)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo normal CTs that were made with other settings (otherwise refused)")
    add_common_arguments(parser)
    return parser


@reported_errors("diff4mm_inpaint")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from synthesis.dataset_io import DatasetError, labelled_cases
    from synthesis.normal_dataset import inpaint_dataset

    from .. import conventions
    from ..splits import selected_training_cases
    from ..visualization import change_montage

    raw = resolve_raw_dataset(args.dataset)
    if args.cases and not args.output:
        raise DatasetError("--cases needs -o/--output (the default folders are per fold)")
    source = args.method or args.model or str(conventions.inpainter_folder(raw, args.fold))
    if args.dilation_mm < 0:
        raise DatasetError(f"--dilation-mm must be >= 0, got {args.dilation_mm}")
    out = args.output or conventions.normal_folder(raw, args.fold)
    cases = selected_training_cases(raw, labelled_cases(raw), args.fold, args.cases)
    record = inpaint_dataset(raw, source, args.dilation_mm, args.device, args.overwrite, montage_fn=change_montage,
                             cases=cases, out_dir=out, shard=args.shard, grain=not args.no_grain,
                             structure=args.structure)
    failed = [(c, p) for c, phases in record["cases"].items() for p, r in phases.items() if not r["ok"]]
    done = f"shard {args.shard}: " if args.shard is not None else ""
    print(f"{done}{len(record['cases'])} normal cases in {out}; no-tumor check: "
          f"{'passed' if not failed else f'{len(failed)} case-phases still look abnormal: {failed[:5]}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
