"""``diff4mm_from_nnunet``: an nnU-Net raw dataset whose channels are unregistered phases -> the multi-phase input
layout (links, nothing copied), ready for diff4mm_validate and diff4mm_register."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import add_common_arguments, reported_errors

PROG = "diff4mm_from_nnunet"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Take an existing nnU-Net raw dataset whose channels are the unregistered phases of each case "
                    "(imagesTr/<case>_0000..000k, labelsTr/<case> on the reference phase's grid with 0 background, "
                    "1 liver, 2 tumor; imagesTs cases become test cases) and write the multi-phase input layout "
                    "OUT/<case>/<PHASE><ending> (+ label) as symbolic links to its files: nothing is copied and the "
                    "dataset is not written to. Then run diff4mm_validate OUT and diff4mm_register OUT as usual. "
                    "Every file is checked to exist before OUT is written; re-running refreshes an OUT made from "
                    "the same dataset.")
    parser.add_argument("-d", "--dataset", required=True, metavar="DATASET",
                        help="the nnU-Net raw dataset: an ID or name in $nnUNet_raw (e.g. 500 or Dataset500_Liver), "
                             "or its folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="new folder for the input layout")
    parser.add_argument("--phases", nargs="+", default=None, metavar="PHASE",
                        help="the phase of each channel, in channel order (e.g. NC AP PVP DELAY); default: the "
                             "dataset.json channel_names, when they name phases rather than a normalisation "
                             "scheme such as CT")
    parser.add_argument("--reference", default=None, metavar="PHASE",
                        help="the phase whose grid the labels are on (default: PVP)")
    add_common_arguments(parser)
    return parser


@reported_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from registration.nnunet_source import phase_layout_from_nnunet

    from .train_synthesizer import resolve_raw_dataset

    source = Path(args.dataset) if Path(args.dataset).is_dir() else resolve_raw_dataset(args.dataset)
    cases, phases, reference = phase_layout_from_nnunet(source, args.output, args.phases, args.reference)
    print(f"{len(cases)} cases from {source} in {args.output} (phases {' '.join(phases)}, reference {reference}); "
          f"next: diff4mm_register {args.output} -d ID -n NAME --phases {' '.join(phases)} --reference {reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
