"""``diff4mm_synthesize``: write N synthetic multi-phase cases (random tumors painted into normal CTs) with a
synthesis bundle, in nnU-Net raw layout."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arg_types import SHARD_HELP, deprecated_alias, finite_float, shard
from .errors import add_common_arguments, add_device_argument, reported_errors
from .train_synthesizer import resolve_raw_dataset

PROG = "diff4mm_synthesize"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Paint random tumor masks (drawn inside the liver from the bundle's fitted size/count "
                    "distribution) into the normal CTs of a dataset with the bundle's latent diffusion model. "
                    "Writes OUT/imagesTr/syn_XXXX_000k, OUT/labelsTr/syn_XXXX (1 liver, 2 tumor), "
                    "OUT/dataset.json and OUT/montages/*.png. Deterministic by seed; re-running completes "
                    "missing cases.")
    parser.add_argument("bundle", metavar="BUNDLE", nargs="?", default=None,
                        help="synthesis bundle folder (diff4mm_train_synthesizer; default: $nnUNet_results/DATASET/"
                             "diff4mm/synthesizer, where diff4mm_train_synthesizer and Diff4MMTrainer keep it)")
    parser.add_argument("-d", "--dataset", required=True, metavar="ID",
                        help="source dataset id or name (its diff4mm/normal/ CTs are used)")
    parser.add_argument("--num-cases", type=int, default=None, metavar="N", help="synthetic cases to write "
                        "(required unless --masks is given)")
    deprecated_alias(parser, "-n", "--num-cases (-n is the dataset name in diff4mm_register)", "num_cases",
                     type=int, metavar="N")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument("--normal", metavar="NORMAL_DIR", default=None,
                        help="paint into the normal CTs of this folder (e.g. DATASET/diff4mm/normal_fold0), those of "
                             "labelled cases it holds (default: DATASET/diff4mm/normal, every labelled case)")
    parser.add_argument("--masks", metavar="MASKS_DIR", default=None,
                        help="paint your own tumor masks instead of random ones: MASKS_DIR/<case><file ending>, "
                             "binary (0 background, 1 tumor), on the grid of that case's labelsTr file and inside its "
                             "liver; one synthetic case per mask, painted into that case's normal CT")
    parser.add_argument("--pattern", nargs="+", type=finite_float(-1000.0, 1000.0), default=None, metavar="HU",
                        help="enhancement pattern painted into every tumor: the mean change (HU) per phase, in the "
                             "dataset's phase order (e.g. NC AP PVP DELAY: -5 30 -10 -15 for a hypervascular, "
                             "washing-out tumor); default: each tumor draws a real training tumor's pattern of "
                             "similar size from the bundle")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shard", type=shard, default=None, metavar="I/N", help=SHARD_HELP + " (dataset.json "
                        "then); case i belongs to shard i %% N")
    add_device_argument(parser, ("cpu", "cuda", "auto"), default="auto", help="default: auto")
    add_common_arguments(parser)
    return parser


@reported_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_cases is None and args.masks is None:
        parser.error("the following arguments are required: --num-cases (or --masks)")
    if args.num_cases is not None and args.num_cases < 1:
        parser.error("--num-cases must be >= 1")
    dataset_dir = resolve_raw_dataset(args.dataset)  # before the torch import: a bad -d fails at once
    bundle = args.bundle
    if bundle is None:
        from .. import conventions

        bundle = conventions.bundle_folder(dataset_dir)
    from synthesis.dataset_io import synthesize_dataset
    from synthesis.pipeline import Synthesizer

    from ..visualization import change_montage

    synthesizer = Synthesizer.from_bundle(bundle, device=args.device)
    names = synthesize_dataset(synthesizer, dataset_dir, args.num_cases, args.output, seed=args.seed,
                               montage_fn=change_montage, normal_dir=args.normal, shard=args.shard, masks_dir=args.masks,
                               enhancement_hu=args.pattern)
    if args.shard is not None:
        print(f"shard {args.shard}: {len(names)} synthetic cases in {args.output}; when every shard has finished, "
              "run the same command without --shard to complete any missing case and write dataset.json")
    else:
        print(f"{len(names)} synthetic cases in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
