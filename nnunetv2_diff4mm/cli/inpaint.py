"""``diff4mm_inpaint``: stage 2, write the normal (tumor-free) phases of every labelled case of a dataset."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from synthesis.dataset_io import DatasetError
from synthesis.inpainting import CLASSICAL_METHODS, DEFAULT_DILATION_MM, InpaintingError
from synthesis.normal_dataset import inpaint_dataset

from .. import conventions
from ..visualization import montage
from .arg_types import finite_float


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
                        "default: DATASET/diff4mm/inpainter if it exists")
    source.add_argument("--method", choices=CLASSICAL_METHODS,
                        help="classical fallback instead of a learned model (no training needed)")
    parser.add_argument("--dilation-mm", type=finite_float(0, 100), default=DEFAULT_DILATION_MM,
                        help=f"tumor mask dilation in mm, covering residual misregistration of the other phases "
                             f"and diffuse tumor borders (default {DEFAULT_DILATION_MM:g})")
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"),
                        help="where the model runs (default auto: cuda if available)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo normal CTs that were made with other settings (otherwise refused)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        raw = conventions.raw_dataset_folder(args.dataset)
        source = args.method or args.model or str(raw / conventions.SUBFOLDER / "inpainter")
        if args.dilation_mm < 0:
            raise DatasetError(f"--dilation-mm must be >= 0, got {args.dilation_mm}")
        record = inpaint_dataset(raw, source, args.dilation_mm, args.device, args.overwrite, montage_fn=montage)
    except (DatasetError, InpaintingError, RuntimeError, FileNotFoundError) as err:
        print(f"diff4mm_inpaint: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    failed = [(c, p) for c, phases in record["cases"].items() for p, r in phases.items() if not r["ok"]]
    print(f"{len(record['cases'])} normal cases in {conventions.normal_folder(raw)}; no-tumor check: "
          f"{'passed' if not failed else f'{len(failed)} case-phases still look abnormal: {failed[:5]}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
